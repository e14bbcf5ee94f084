"""`make bench` is not run by CI; this runs the tracing-overhead benchmark briefly, so that it keeps
working and keeps measuring what it says: real server processes, a traced make+drop cycle
recording its six spans, and the production variant exporting only a sample of them."""

from __future__ import annotations

import asyncio

import bench  # server/benchmarks (conftest.py puts it on sys.path)
import bench_auth  # server/benchmarks (conftest.py puts it on sys.path)
import bench_tracing


def test_tracing_benchmark_measures_every_variant_and_the_traced_span_tree() -> None:
    results = asyncio.run(bench_tracing.run(seconds=0.3, rounds=1))

    assert set(results) == set(bench_tracing.VARIANTS)
    for variant, result in results.items():
        assert result.rate > 0, variant
        assert result.cpu_us_per_cycle > 0, variant
    assert results["off"].export is None
    every = results["all"].export
    assert every is not None
    # Two RPC spans, each with a provider and a store child span.
    assert every.spans_per_cycle == 6
    assert every.encode_us_per_span > 0
    production = results["production"].export
    assert production is not None and production.spans < every.spans

    text = bench_tracing.report(results)
    assert "the 15% target" in text and "spans per cycle" in text


def test_authentication_benchmark_measures_every_variant() -> None:
    results = asyncio.run(bench_auth.run(seconds=0.3, rounds=1))
    assert set(results) == set(bench_auth.VARIANTS)
    for variant, result in results.items():
        assert result.rate > 0 and result.cpu_us_per_cycle > 0, variant
    assert "the 10% target for JWT" in bench_auth.report(results)


def test_remote_provider_benchmark_measures_both_ways_with_the_provider_process_cpu() -> None:
    results = bench.run_remote(seconds=0.3, rounds=1)
    results = asyncio.run(results)
    for kind in ("in_process", "remote"):
        assert results[f"{kind}_cycles_per_s"] > 0, kind
        assert results[f"{kind}_cpu_us_per_cycle"] > 0, kind
    text = bench.report_remote(results)
    assert "out of process / in process" in text and "goal >= 0.7" in text
