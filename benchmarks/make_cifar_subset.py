"""Write a class-balanced subset of an ImageFolder tar (first N images of each class, listing order) as a tar.

PYTHONPATH=. .venv/bin/python benchmarks/make_cifar_subset.py SRC.tar DST.tar PER_CLASS
"""

import io
import sys
import tarfile

from openseer.data import open_source


def main(src: str, dst: str, per_class: int) -> None:
    source = open_source(src, labelled=True)
    taken: dict[int, int] = {}
    with tarfile.open(dst, "w") as out:
        for i in range(len(source)):
            label = source.label(i)
            if taken.get(label, 0) >= per_class:
                continue
            taken[label] = taken.get(label, 0) + 1
            data = source.read(i)
            info = tarfile.TarInfo(source.name(i))
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    print(f"{dst}: {sum(taken.values())} images, {len(taken)} classes")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
