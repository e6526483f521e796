"""EvalSettings (openseer.eval.settings): keyword options of the API and of compare become one settings object."""

from openseer.eval.settings import FROM_RUN, EvalSettings


def test_pop_from_takes_the_settings_out_of_keyword_options():
    options = {"image_size": 32, "device": "cpu", "ks": (1, 3), "epochs": 2}
    settings = EvalSettings.pop_from(options)
    assert settings == EvalSettings(image_size=32, crop_pct=0.0, batch_size=0, num_workers=-1, device="cpu")
    assert options == {"ks": (1, 3), "epochs": 2}  # the evaluation's own options stay
    assert EvalSettings.pop_from({"ks": (1,)}) == FROM_RUN
