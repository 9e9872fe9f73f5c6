"""The kill switch's row on a shared PostgreSQL: a pause made through one worker's store is seen
by another's at once, and two workers pausing at the same time leave one consistent row."""

from __future__ import annotations

import threading

from heald import pause
from heald.store import Store


def test_a_pause_is_seen_by_every_worker_on_the_database(pg_url: str) -> None:
    one, two = Store(pg_url), Store(pg_url)
    one.migrate()
    try:
        assert not pause.state(two).paused
        pause.pause(one, "user:alice", "deploy freeze")
        seen = pause.state(two)
        assert seen.paused and seen.actor == "user:alice" and seen.reason == "deploy freeze"
        errors: list[BaseException] = []

        def again(store: Store, who: str) -> None:
            try:
                pause.pause(store, who, f"by {who}")
            except BaseException as exc:  # noqa: BLE001 -- reported below
                errors.append(exc)

        threads = [threading.Thread(target=again, args=(s, f"user:{n}")) for n, s in (("a", one), ("b", two))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        final = pause.state(one)
        assert final.paused and final.reason == f"by {final.actor}"  # one writer's row, whole
        pause.resume(two, "user:bob")
        assert not pause.state(one).paused
        assert len(one.search_audit(event="heald.paused", limit=10)) == 3
    finally:
        one.close()
        two.close()
