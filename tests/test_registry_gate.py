"""registry/gate.py: a commit by another process is seen at the very next
look, including commits after the WAL was checkpointed and restarted from
its beginning (same file size, same second)."""
import sqlite3
import subprocess
import sys

from registry.gate import StatGate

WRITER = r"""
import sqlite3, sys
cx = sqlite3.connect(sys.argv[1], isolation_level=None)
for line in sys.stdin:
    if line.startswith("checkpoint"):
        cx.execute("PRAGMA wal_checkpoint(RESTART)")
    else:
        cx.execute("INSERT INTO t VALUES (?)", (line.strip(),))
    print("done", flush=True)
"""


def test_a_commit_elsewhere_is_seen_at_the_next_look(tmp_path):
    path = tmp_path / "x.db"
    cx = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    cx.execute("PRAGMA journal_mode=WAL")
    cx.execute("CREATE TABLE t (v TEXT)")
    reads = []

    def generation():
        reads.append(1)
        return cx.execute("PRAGMA data_version").fetchone()[0], \
            cx.execute("SELECT count(*) FROM t").fetchone()[0]

    gate = StatGate(path, generation)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        gate.get()
        gate.get()
        before = len(reads)
        for _ in range(20):                  # unchanged: answered from the mapping
            gate.get()
        assert len(reads) == before
        rows = 0
        for i in range(60):
            command = "checkpoint" if i % 7 == 3 else f"row {i}"
            writer.stdin.write(command + "\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == "done\n"
            if command != "checkpoint":
                rows += 1
                # The writer's commit has returned: the very next look sees it.
                assert gate.get()[1] == rows, f"commit {i} not seen"
    finally:
        writer.stdin.close()
        writer.wait(10)
        cx.close()
        gate.close()                         # after the connection (see gate.py)


def test_without_a_wal_index_every_look_reads(tmp_path):
    reads = []
    gate = StatGate(tmp_path / "none.db", lambda: reads.append(1) or len(reads))
    assert [gate.get() for _ in range(3)] == [1, 2, 3]
    gate.close()
    remote = StatGate("s3://bucket/trust", lambda: reads.append(1) or len(reads))
    assert remote.get() == 4 and remote.get() == 5
    remote.close()
