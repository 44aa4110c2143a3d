"""The throwaway PostgreSQL server the tests, conformance and benchmarks start."""

from __future__ import annotations

import psycopg

from kanal.throwaway import ThrowawayPostgres


def test_a_throwaway_server_starts_answers_and_leaves_nothing() -> None:
    with ThrowawayPostgres() as cluster:
        assert cluster.url.startswith("postgresql://postgres@127.0.0.1:")
        with psycopg.connect(cluster.url) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()
            assert version is not None and int(version[0]) >= 150000
            conn.execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        directory = cluster.dir
    assert not directory.exists()
