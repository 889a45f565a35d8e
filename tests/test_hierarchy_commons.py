"""Commons category URL -> title normalisation."""

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hglv2.hierarchy.commons import category_name, category_title, normalize_title


@pytest.mark.parametrize(
    "url,title",
    [
        ("http://commons.wikimedia.org/wiki/Category:Sankt_Georgen_(Wien)", "Category:Sankt Georgen (Wien)"),
        (
            "https://commons.wikimedia.org/wiki/Category:Ch%C3%A2teau_de_Chambord",
            "Category:Château de Chambord",
        ),
        ("http://commons.wikimedia.org/wiki/category:eiffel_Tower", "Category:Eiffel Tower"),
        ("http://commons.wikimedia.org/wiki/Category:A__b_%20c_", "Category:A b c"),
        ("https://commons.m.wikimedia.org/wiki/Category:X#section", "Category:X"),
        ("https://commons.wikimedia.org/w/index.php?title=Category:Big_Ben&action=edit", "Category:Big Ben"),
        ("http://commons.wikimedia.org/wiki/Category:ßtraße", "Category:ßtraße"),
        ("http://commons.wikimedia.org/wiki/Category:%C3%A9glise", "Category:Église"),
    ],
)
def test_category_title(url, title):
    assert category_title(url) == title


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "http://en.wikipedia.org/wiki/Category:X",
        "http://commons.wikimedia.org/wiki/File:X.jpg",
        "ftp://commons.wikimedia.org/wiki/Category:X",
        "http://commons.wikimedia.org/wiki/Category:",
        "http://commons.wikimedia.org/wiki/Category:A%7CB",
        "http://commons.wikimedia.org/foo",
    ],
)
def test_invalid_urls(url):
    with pytest.raises(ValueError):
        category_title(url)


def test_category_name():
    assert category_name("Category:Big Ben") == "Big Ben"
    assert category_name("Big Ben") == "Big Ben"


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="<>[]{}|#%"),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip(" _\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0"))


@given(names)
def test_normalize_is_idempotent_and_url_round_trip(name):
    title = normalize_title("Category:" + name)
    assert normalize_title(title) == title
    if title == "Category:" or any(c.isspace() and c != " " for c in title):
        return
    url = "https://commons.wikimedia.org/wiki/" + quote(title.replace(" ", "_"), safe=":_()")
    assert category_title(url) == title
