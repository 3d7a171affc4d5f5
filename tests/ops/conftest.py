"""Prints the largest measured errors of the op tests per dtype (the numbers behind tests/tolerances.py)."""
import ops_harness


def pytest_terminal_summary(terminalreporter):
    if not ops_harness.RESULTS:
        return
    terminalreporter.section(f"mmx.ops errors vs float64 numpy ({ops_harness.BACKEND})")
    for dtype in sorted({row[1] for row in ops_harness.RESULTS}):
        rows = [row for row in ops_harness.RESULTS if row[1] == dtype]
        worst_forward = max(rows, key=lambda row: row[2])
        with_backward = [row for row in rows if row[3] is not None]
        line = f"{dtype:9s} checks {len(rows):3d}  worst forward {worst_forward[2]:.2e} ({worst_forward[0]})"
        if with_backward:
            worst_backward = max(with_backward, key=lambda row: row[3])
            line += f"  worst backward {worst_backward[3]:.2e} ({worst_backward[0]})"
        terminalreporter.write_line(line)
