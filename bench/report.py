"""docs/benchmarks.md is assembled from sections, one per benchmark script, so that each
script rewrites only its own section."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = """# Benchmarks

Every figure here is measured by a script in `bench/`, against a baseline measured in the
same run on the same machine. Rerun a script to refresh its section. Tests never assert
timings; these numbers are the place to look.
"""


def update_section(path: Path, key: str, title: str, body: str) -> None:
    """Replace (or append) the section marked ``key`` in ``path``."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    start, end = f"<!-- section:{key} -->", f"<!-- end:{key} -->"
    block = f"{start}\n## {title}\n\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def run_script(kind: str, db: str, sql: str) -> None:
    """Run a multi-statement SQL script on the loopback PostgreSQL or MariaDB database."""
    if kind == "postgresql":
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={db}",
                             autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]
        return
    import pymysql

    my = pymysql.connect(host="127.0.0.1", user="root", database=db,
                         client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    try:
        with my.cursor() as cur:
            cur.execute(sql)
            while cur.nextset():
                pass
        my.commit()
    finally:
        my.close()
