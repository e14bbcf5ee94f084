"""`make bench` is not run by CI; this runs each benchmark briefly, so that it keeps working and
keeps measuring what it says: real server processes, every target row judged, a traced make+drop
cycle recording its four spans and the production variant exporting only a sample of them, every
event reaching every watcher, one SQLite process beside one and two replicas on PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import bench  # server/benchmarks (conftest.py puts it on sys.path)
import bench_auth
import bench_replicas
import bench_tracing
import bench_watch
import targets

from callqos.server.testing import PostgresServer


def test_tracing_benchmark_measures_every_variant_and_the_traced_span_tree() -> None:
    results = asyncio.run(bench_tracing.run(seconds=0.3, rounds=1))

    assert set(results) == set(bench_tracing.VARIANTS)
    for variant, result in results.items():
        assert result.rate > 0, variant
        assert result.cpu_us_per_cycle > 0, variant
    assert results["off"].export is None
    every = results["all"].export
    assert every is not None
    # Two RPC spans, each with its provider child span (admit, release).
    assert every.spans_per_cycle == 4
    assert every.encode_us_per_span > 0
    production = results["production"].export
    assert production is not None and production.spans < every.spans
    # Nothing sampled records nothing; recorded-not-exported hands no span to an exporter.
    assert results["unsampled"].export is not None and results["unsampled"].export.spans == 0
    assert results["production_recorded"].export is None

    text = bench_tracing.report(results)
    assert "the 10% target" in text and "spans per cycle" in text
    assert "recording the sampled spans" in text and "exporting them" in text


def test_authentication_benchmark_measures_every_variant() -> None:
    results = asyncio.run(bench_auth.run(seconds=0.3, rounds=1))
    assert set(results) == set(bench_auth.VARIANTS)
    for variant, result in results.items():
        assert result.rate > 0 and result.cpu_us_per_cycle > 0, variant
    assert "the 10% target for JWT" in bench_auth.report(results)


def test_throughput_benchmark_judges_every_row_against_the_echo_of_its_run(tmp_path: Path) -> None:
    results = asyncio.run(bench.run(seconds=0.3, rounds=1))
    assert set(results) == set(bench.VARIANTS)
    for name, series in results.items():
        assert series.rate > 0 and series.cpu_us_per_rpc > 0, name
    commit_us = asyncio.run(bench.commit_cost_us(commits=64))
    assert commit_us > 0
    judged = bench.rows(results, commit_us)
    assert "limit" in bench.table(results, commit_us)
    assert {row.key for row in judged} == {
        "make_drop",
        "make_drop_sampled",
        "renegotiate",
        "get",
        "tracing_sampled",
        "tracing_all",
    }
    # Each ratio row says how close it could come: the floors of the same run.
    assert all("floor+decide" in row.note for row in judged if row.key in bench.FLOORS)
    text = targets.report(judged, tmp_path / "results.jsonl")
    assert text.count("PASS") + text.count("FAIL") == len(judged)
    assert "watchers" in targets.summary(tmp_path / "results.jsonl")  # the rows not measured are listed too


def test_watch_benchmark_delivers_every_event_to_every_watcher_of_both_servers() -> None:
    results = asyncio.run(
        bench_watch.run(watchers=30, events=3, rate=20.0, open_at_once=60, processes=2, generator="python", rounds=1)
    )
    assert set(results) == {"bare", "callqos"}
    for name, measured in results.items():
        (delivery,) = measured.delivery
        assert delivery.opened == 30 and not delivery.failed, name
        assert len(delivery.delays_ms) == 30 * 3 and delivery.missing == 0, name
        assert all(delay >= 0 for delay in delivery.delays_ms), name
        assert measured.at_once is not None and measured.at_once.opened == 60, name
        assert measured.at_once.missing == 0, name
    assert {row.key for row in bench_watch.rows(results)} == {"watch_p99", "watch_memory", "watch_open_failed"}


def test_replicas_benchmark_measures_sqlite_and_one_and_two_replicas(postgres: PostgresServer) -> None:
    results = asyncio.run(bench_replicas.run(seconds=0.3, postgres=postgres))
    assert set(results.variants) == set(bench_replicas.VARIANTS)
    for name, variant in results.variants.items():
        assert variant.rate > 0 and variant.server_cpu_ms > 0, name
        assert (variant.database_cpu_ms > 0) == name.startswith("postgresql"), name
    assert results.event_commits_per_s > 0
    text = bench_replicas.report(results)
    assert "2 replicas against 1" in text and "projection" in text


def test_remote_provider_benchmark_measures_both_ways_with_the_provider_process_cpu() -> None:
    results = bench.run_remote(seconds=0.3, rounds=1)
    results = asyncio.run(results)
    for kind in ("in_process", "remote"):
        assert results[f"{kind}_cycles_per_s"] > 0, kind
        assert results[f"{kind}_cpu_us_per_cycle"] > 0, kind
    text = bench.report_remote(results)
    assert "out of process / in process" in text and "goal >= 0.7" in text
