"""Visual report of a run: ``openseer report RUN_DIR`` -> ``RUN_DIR/report/report.html`` + PNGs."""

from openseer.report.report import eval_rows, write_report

__all__ = ["eval_rows", "write_report"]
