#!/usr/bin/env python3
"""Write burst-trace.jsonl beside this script: one week of a bursty GPU workload.

Each day has a nightly job due by 06:00 and one small job per hour without a
deadline. Weekdays (days 0 to 4) add a morning burst of 10 jobs between 09:00 and
09:40, due 2 to 3 hours after arrival. They also add an afternoon burst of 6 jobs
between 14:00 and 14:30, due 90 minutes to 2 hours after arrival. The random draws
use a fixed seed, so the output is the same on every run.
"""

import json
import pathlib
import random

HOUR = 3600
DAY = 24 * HOUR
# Seconds per task for each model, as the simulator runs them.
TASK_SECS = {"minilm": 45.0, "mpnet": 80.0, "e5-large": 150.0}


def make_jobs(rng):
    jobs = []

    def add(job_id, arrival, tasks, model, deadline=None, priority=0, max_workers=None):
        job = {
            "id": job_id,
            "arrival_secs": round(arrival),
            "tasks": tasks,
            "task_secs": TASK_SECS[model],
            "model": model,
        }
        if deadline is not None:
            job["deadline_secs"] = deadline
        if priority:
            job["priority"] = priority
        if max_workers:
            job["max_workers"] = max_workers
        jobs.append(job)

    for day in range(7):
        start = day * DAY
        add(f"d{day}-nightly", start + 1 * HOUR, 1500, "minilm", deadline=5 * HOUR)
        for hour in range(24):
            add(f"d{day}-h{hour:02d}-small", start + hour * HOUR + 300, 30, "minilm")
        if day >= 5:
            continue

        for index in range(10):
            model = rng.choice(["minilm", "minilm", "mpnet", "e5-large"])
            # 5 to 10 worker-hours of work each.
            tasks = int(rng.uniform(5 * HOUR, 10 * HOUR) / TASK_SECS[model])
            add(
                f"d{day}-am{index:02d}-{model}",
                start + 9 * HOUR + rng.uniform(0, 40 * 60),
                tasks,
                model,
                deadline=rng.choice([2, 2.5, 3]) * HOUR,
                priority=rng.choice([0, 0, 1]),
            )
        for index in range(6):
            model = rng.choice(["minilm", "mpnet"])
            # 3 to 6 worker-hours of work each.
            tasks = int(rng.uniform(3 * HOUR, 6 * HOUR) / TASK_SECS[model])
            add(
                f"d{day}-pm{index:02d}-{model}",
                start + 14 * HOUR + rng.uniform(0, 30 * 60),
                tasks,
                model,
                deadline=rng.choice([1.5, 2]) * HOUR,
                max_workers=40 if index == 0 else None,
            )

    jobs.sort(key=lambda job: job["arrival_secs"])
    return jobs


def main():
    jobs = make_jobs(random.Random(20240611))
    settings = {"settings": {"period_secs": 7 * DAY, "seed": 7}}
    path = pathlib.Path(__file__).with_name("burst-trace.jsonl")
    with path.open("w") as file:
        for line in [settings, *jobs]:
            file.write(json.dumps(line) + "\n")
    work_hours = sum(job["tasks"] * job["task_secs"] for job in jobs) / HOUR
    print(f"{path}: {len(jobs)} jobs, {work_hours:.1f} worker-hours")


if __name__ == "__main__":
    main()
