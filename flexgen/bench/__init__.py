"""Benchmarks of dense vs dynamic models (`flexgen bench`), one concern per module:

    commands       each command's arguments and what it runs; `add_parsers` puts them under the command line
    options        the model flags flops, latency and plan share, and the run they make (`bench_run`)
    models         a run's network on the meta device, the dense bench setup, the dynamic plan of a run
    measure        the timing loop: dense and dynamic alternating in one process (`measure`)
    memory         the peak-memory meter (CUDA statistics, or malloc's bytes in use on the CPU)
    flops          `bench flops`: parameters and MACs per forward (`dydit_flops` for DyDiT)
    latency        `bench latency`: `latency_report`, the dense vs dynamic latency of a run
    plan           `bench plan`: schedules within a MACs budget (the planner is flexgen.policies.plan)
    suite          `bench suite`: the standard speed table over the papers' models
    suite_outputs  the suite's suite.json, suite.md and suite.svg
    device         a device's peak TFLOP/s and matmul rate
"""
