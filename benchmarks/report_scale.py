"""Tables of bench_scale.py: per-step seconds, rows/s and peak RSS, and the suite/plain ratios."""

from __future__ import annotations

GB = 1024**3
WINDOW_STEPS = ("training_set", "candidate_model")


def step_rows(size: dict, step: str) -> int:
    """Rows a step handles: the window's for training steps, else the day's."""
    return size["rows"] * (size["window"] if step in WINDOW_STEPS else 1)


def run_of(side: dict, job: str) -> list[dict]:
    return [r for r in side["runs"] if r["job"] == job]


def print_size(size: dict) -> None:
    rows, day_gb = size["rows"], size["day_bytes"] / GB
    print(f"\n== {rows:,} rows a day (day in memory {day_gb:.2f} GB, window {size['window']} days)")
    print(f"{'job':<10}{'step':<20}{'seconds':>9}{'rows/s':>12}{'peak RSS GB':>13}{'x data':>8}")
    for run in size["suite"]["runs"]:
        if run["job"] == "ingest" and run is not run_of(size["suite"], "ingest")[-1]:
            continue
        print(f"{run['job']:<10}{'(run)':<20}{run['seconds']:>9.1f}")
        for step, info in run["steps"].items():
            n = step_rows(size, step)
            data = size["day_bytes"] * (size["window"] if step in WINDOW_STEPS else 1)
            print(
                f"{'':<10}{step:<20}{info['seconds']:>9.1f}{n / max(info['seconds'], 1e-3):>12,.0f}"
                f"{info['peak_rss'] / GB:>13.2f}{info['peak_rss'] / data:>8.1f}"
            )
    if "online" in size["suite"]:
        online = size["suite"]["online"]
        print(
            f"online_features: {online['entities_written']:,} entities in "
            f"{online['write_seconds']:.1f} s = {online['rows_per_second']:,} rows/s, "
            f"peak {online['peak_rss'] / GB:.2f} GB"
        )
    for run in size["plain"]["runs"][-3:]:
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in run["seconds"].items())
        peak = max(run["peaks"].values()) / GB
        print(
            f"plain {run['job']:<10}{run['seconds_total']:>7.1f}s  peak {peak:.2f} GB  ({phases})"
        )


def summary_rows(results: list[dict]) -> list[str]:
    """Markdown rows: per size, each job's suite seconds, plain seconds and ratio, peak RSS."""
    lines = [
        "| rows a day | job | suite s | plain s | ratio | suite peak RSS GB (step) "
        "| plain peak GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in results:
        for job in ("ingest", "lifecycle", "daily"):
            suite = run_of(size["suite"], job)[-1]
            plain = run_of(size["plain"], job)[-1]
            step, info = max(suite["steps"].items(), key=lambda kv: kv[1]["peak_rss"])
            lines.append(
                f"| {size['rows']:,} | {job} | {suite['seconds']:.1f} | "
                f"{plain['seconds_total']:.1f} | {suite['seconds'] / plain['seconds_total']:.1f} | "
                f"{info['peak_rss'] / GB:.2f} ({step}) | {max(plain['peaks'].values()) / GB:.2f} |"
            )
    return lines
