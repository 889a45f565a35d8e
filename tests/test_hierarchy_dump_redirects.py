"""Redirects for the dump route: QID pairs, and Wikimedia's redirect + page table dumps (SQL, TSV)."""

from __future__ import annotations

import gzip

import pytest

from hglv2.errors import InputError
from hglv2.hierarchy.dump_redirects import read_redirects

HEAD = """-- MySQL dump 10.19  Distrib 10.3.38-MariaDB, for debian-linux-gnu (x86_64)
--
-- Host: 10.64.48.34    Database: wikidatawiki
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
DROP TABLE IF EXISTS `{table}`;
CREATE TABLE `{table}` (
  `rd_from` int(8) unsigned NOT NULL DEFAULT 0,
  PRIMARY KEY (`rd_from`)
) ENGINE=InnoDB DEFAULT CHARSET=binary;
LOCK TABLES `{table}` WRITE;
/*!40000 ALTER TABLE `{table}` DISABLE KEYS */;
"""
TAIL = "/*!40000 ALTER TABLE `{table}` ENABLE KEYS */;\nUNLOCK TABLES;\n"

REDIRECT_ROWS = [
    "INSERT INTO `redirect` VALUES (101,0,'Q42','',''),(102,0,'Q5',NULL,NULL),"
    "(103,120,'P31','',''),(104,4,'Project_chat','','Section'),(105,0,'Q7','','');",
    "INSERT INTO `redirect` VALUES (106,0,'Q8','',''),(107,0,'Main_Page','','');",
]
PAGE_ROWS = [
    "INSERT INTO `page` VALUES (101,0,'Q1000',1,0,0.123456789,'20240101000000','20240101000000',456,78,"
    "'wikibase-item',NULL),(102,0,'Q1001',1,0,0.5,'20240101000000',NULL,457,79,'wikibase-item',NULL),"
    "(103,120,'P9999',1,0,0.25,'20240101000000','20240101000000',458,80,'wikibase-property',NULL);",
    "INSERT INTO `page` VALUES (104,4,'O\\'Brien_(1,0,\\'Q1\\',x)',1,0,0.1,'20240101000000',NULL,1,2,"
    "'wikitext','en'),(105,0,'Q1002',1,0,1e-05,'2024\\\\0101',NULL,3,4,'wikibase-item',NULL),"
    "(106,0,'Q1003',0,0,0.2,'20240101000000',NULL,5,6,'wikibase-item',NULL),"
    "(107,0,'Q1004',1,0,0.3,'20240101000000',NULL,7,8,'wikibase-item',NULL),"
    "(200,0,'Q2000',0,1,0.4,'20240101000000',NULL,9,10,'wikibase-item',NULL);",
]
# namespace 0 redirects from Q pages to Q titles; 103 (property), 104 (project page) and 107
# (target not an item) are left out
EXPECTED = {"Q1000": "Q42", "Q1001": "Q5", "Q1002": "Q7", "Q1003": "Q8"}


def _sql(table: str, rows: list[str]) -> str:
    return HEAD.format(table=table) + "\n".join(rows) + "\n" + TAIL.format(table=table)


def test_sql_table_dumps(tmp_path):
    red = tmp_path / "wikidatawiki-20240601-redirect.sql.gz"
    page = tmp_path / "wikidatawiki-20240601-page.sql.gz"
    with pytest.raises(InputError, match="page table dump wikidatawiki-20240601-page.sql.gz"):
        red.write_bytes(gzip.compress(_sql("redirect", REDIRECT_ROWS).encode()))
        read_redirects(red)
    page.write_bytes(gzip.compress(_sql("page", PAGE_ROWS).encode()))
    assert read_redirects(red) == EXPECTED
    plain = tmp_path / "wikidatawiki-20240601-redirect.sql"
    plain.write_text(_sql("redirect", REDIRECT_ROWS))
    (tmp_path / "wikidatawiki-20240601-page.sql").write_text(_sql("page", PAGE_ROWS))
    assert read_redirects(plain) == EXPECTED


def test_sql_errors_name_the_line(tmp_path):
    red = tmp_path / "x-redirect.sql"
    red.write_text(_sql("redirect", ["INSERT INTO `redirect` VALUES (101,0,'Q42','',''),(102,0,Q5,'','');"]))
    (tmp_path / "x-page.sql").write_text(_sql("page", PAGE_ROWS))
    with pytest.raises(
        InputError, match=r"x-redirect.sql:12: not a row of the `redirect` table at column 51"
    ):
        read_redirects(red)
    red.write_text(_sql("redirect", ["INSERT INTO `page` VALUES (101,0,'Q42','','');"]))
    with pytest.raises(InputError, match="an INSERT into `page`, expected `redirect`"):
        read_redirects(red)
    red.write_bytes(b"\x1f\x8b not gzip")
    red = red.rename(tmp_path / "x-redirect.sql.gz")
    (tmp_path / "x-page.sql.gz").write_bytes(b"")
    with pytest.raises(InputError, match="cannot read the redirects"):
        read_redirects(red)


def test_tsv_table_dumps(tmp_path):
    red = tmp_path / "wikidatawiki-20240601-redirect.tsv"
    red.write_text(
        "rd_from\trd_namespace\trd_title\trd_interwiki\trd_fragment\n101\t0\tQ42\t\t\n103\t120\tP31\t\t\n105\t0\tQ7\t\t\n"
    )
    page = tmp_path / "wikidatawiki-20240601-page.tsv.gz"
    page.write_bytes(
        gzip.compress(b"page_id\tpage_namespace\tpage_title\n101\t0\tQ1000\n103\t120\tP9\n105\t0\tQ1002\n")
    )
    (tmp_path / "wikidatawiki-20240601-page.tsv").write_text("101\t0\tQ1000\n103\t120\tP9\n105\t0\tQ1002\n")
    assert read_redirects(red) == {"Q1000": "Q42", "Q1002": "Q7"}
    red.write_text("101\tzero\tQ42\n")
    with pytest.raises(InputError, match="redirect.tsv:1: expected a `redirect` row"):
        read_redirects(red)


def test_qid_pairs(tmp_path):
    r = tmp_path / "r.csv"
    r.write_text("from,to\nQ1,Q2\nQ3\tQ4\n")
    assert read_redirects(r) == {"Q1": "Q2", "Q3": "Q4"}
    r.write_text("Q1,Q2\nQ1,x\n")
    with pytest.raises(InputError, match="r.csv:2"):
        read_redirects(r)


def test_table_dumps_are_parsed_once(tmp_path, monkeypatch):
    from hglv2.hierarchy import dump_redirects

    red = tmp_path / "wikidatawiki-20240601-redirect.sql.gz"
    red.write_bytes(gzip.compress(_sql("redirect", REDIRECT_ROWS).encode()))
    page = tmp_path / "wikidatawiki-20240601-page.sql.gz"
    page.write_bytes(gzip.compress(_sql("page", PAGE_ROWS).encode()))
    cache = tmp_path / "facts.redirects.parquet"
    assert dump_redirects.cached_redirects(red, cache) == EXPECTED
    parsed = []
    real = dump_redirects.read_table_dumps
    monkeypatch.setattr(dump_redirects, "read_table_dumps", lambda p: parsed.append(p) or real(p))
    assert dump_redirects.cached_redirects(red, cache) == EXPECTED and parsed == []
    page.write_bytes(gzip.compress(_sql("page", PAGE_ROWS[:1]).encode()))  # another page table
    assert dump_redirects.cached_redirects(red, cache) == {"Q1000": "Q42", "Q1001": "Q5"} and parsed == [red]
