"""The MovieLens loader on small fixture files in each format, and on the real ml-100k."""

import json
from pathlib import Path

import pytest

from recloop.ingest import ingest_movielens
from recloop.sources.movielens import SourceError, detect_format, load_movielens

GENRES = (
    "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\n"
    "Documentary|7\nDrama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\n"
    "Romance|14\nSci-Fi|15\nThriller|16\nWar|17\nWestern|18\n"
)


def flags(*on: int) -> str:
    return "|".join("1" if n in on else "0" for n in range(19))


def write(folder: Path, files: dict[str, str], encoding: str = "latin-1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return folder


def ml100k_files(ratings: str) -> dict[str, str]:
    return {
        "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n",
        "u.item": f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags(3, 4, 5)}\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://x|{flags(1, 2, 16)}\n",
        "u.genre": GENRES,
        "u.data": ratings,
    }


GOOD_100K = "1\t1\t5\t881250949\n2\t2\t3\t891717742\n1\t2\t4\t881250950\n"


def test_ml100k_fixture(tmp_path: Path) -> None:
    dataset = load_movielens(write(tmp_path / "ml", ml100k_files(GOOD_100K)))
    assert dataset.name == "ml-100k"
    assert (len(dataset.users), len(dataset.items), len(dataset.events)) == (2, 2, 3)
    assert not dataset.quarantined
    toy = next(item for item in dataset.items if item.item_id == "1")
    assert toy.categories == ["Animation", "Children's", "Comedy"]
    assert toy.text == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    user = next(user for user in dataset.users if user.user_id == "1")
    assert (user.age, user.gender, user.occupation) == (24, "M", "technician")
    assert user.created_at.timestamp() == 881250949  # first rating
    assert {event.event_type.value for event in dataset.events} == {"rating"}
    # Deterministic ids: loading again gives the same events.
    again = load_movielens(tmp_path / "ml")
    assert [e.event_id for e in again.events] == [e.event_id for e in dataset.events]


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        ("3\t1\t5\t881250949", "user_id", "unknown user '3'"),
        ("1\t9\t5\t881250949", "item_id", "unknown item '9'"),
        ("1\t1\t7\t881250949", "value", "outside"),
        ("1\t1\tfive\t881250949", "rating", "not a number"),
        ("1\t1\t5\tyesterday", "timestamp", "not a Unix time"),
        ("1\t1\t5\t-5", "timestamp", "outside 1990-2100"),
        ("1\t1\t5", "<line>", "expected 4"),
    ],
)
def test_ml100k_bad_rating_rows_are_quarantined(tmp_path: Path, line, field, reason) -> None:
    dataset = load_movielens(write(tmp_path / "ml", ml100k_files(GOOD_100K + line + "\n")))
    assert len(dataset.events) == 3
    (row,) = dataset.quarantined
    assert (row.file, row.line, row.field) == ("u.data", 4, field)
    assert reason in row.reason
    assert row.raw == line
    assert dataset.files["u.data"].rejected == 1


def test_ml100k_bad_users_and_items(tmp_path: Path) -> None:
    files = ml100k_files(GOOD_100K)
    files["u.user"] += "1|30|F|writer|00000\n3|999|F|writer|00000\n4|x|F|writer|0\n"
    files["u.item"] += f"5|Bad Flags|01-Jan-1995||http://x|{flags(1).replace('0', '2', 1)}\n"
    dataset = load_movielens(write(tmp_path / "ml", files))
    found = {(row.file, row.line, row.field) for row in dataset.quarantined}
    assert found == {
        ("u.user", 3, "user_id"),  # duplicate of line 1
        ("u.user", 4, "age"),  # 999 is out of range
        ("u.user", 5, "age"),  # not an integer
        ("u.item", 3, "genres"),
    }
    assert any("duplicate of line 1" in row.reason for row in dataset.quarantined)


def test_the_events_of_a_rejected_user_or_item_are_quarantined_with_it(tmp_path: Path) -> None:
    """A user row its contract rejects takes its ratings with it, each quarantined naming the
    rejected row: loaded, they would be events of a user the warehouse never holds. (An item
    row that fails to parse was never an item: its ratings name an unknown item.)"""
    files = ml100k_files(GOOD_100K + "3\t1\t4\t881250960\n1\t5\t2\t881250961\n")
    files["u.user"] += "3|200|F|writer|00000\n"
    files["u.item"] += f"5|Bad Flags|01-Jan-1995||http://x|{flags(1).replace('0', '2', 1)}\n"
    dataset = load_movielens(write(tmp_path / "ml", files))
    assert {(e.user_id, e.item_id) for e in dataset.events} == {("1", "1"), ("2", "2"), ("1", "2")}
    orphans = {(row.line, row.field, row.reason) for row in dataset.quarantined
               if row.file == "u.data"}  # fmt: skip
    assert orphans == {
        (4, "user_id", "user '3' was rejected (u.user line 3)"),
        (5, "item_id", "unknown item '5'"),  # its row failed to parse: never an item
    }
    assert dataset.files["u.data"].rejected == 2


def test_a_rating_that_contradicts_an_earlier_line_is_quarantined(tmp_path: Path) -> None:
    """Same user, item and second (so the same event id) with another rating: the log would
    keep one and drop the other as a duplicate; the later goes to quarantine instead. An exact
    repeat is a duplicate and is not."""
    ratings = GOOD_100K + "1\t1\t1\t881250949\n1\t1\t5\t881250949\n"
    dataset = load_movielens(write(tmp_path / "ml", ml100k_files(ratings)))
    (row,) = dataset.quarantined
    assert (row.file, row.line, row.field) == ("u.data", 4, "rating")
    assert row.reason == "conflicts with line 1 (same user, item and second, rating 5, kept)"
    assert [e.value for e in dataset.events if (e.user_id, e.item_id) == ("1", "1")] == [5, 5]


def test_ml1m_fixture(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "ml1m",
        {
            "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::99::1\n",
            "movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n"
            "2::Jumanji (1995)::Adventure|Children's|Fantasy\n",
            "ratings.dat": "1::1::5::978300760\n2::2::3::978302109\n2::1::0::978302109\n",
        },
    )
    assert detect_format(folder) == "ml-1m"
    dataset = load_movielens(folder)
    assert (len(dataset.users), len(dataset.items), len(dataset.events)) == (2, 2, 2)
    user = next(user for user in dataset.users if user.user_id == "2")
    assert (user.age, user.occupation) == (56, "self-employed")
    assert {(r.file, r.line, r.field) for r in dataset.quarantined} == {
        ("users.dat", 3, "occupation"),
        ("ratings.dat", 3, "value"),
    }


def test_ml_latest_small_fixture_with_tags(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "latest",
        {
            "movies.csv": "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
            '2,"Heat, The (1995)",(no genres listed)\n',
            "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,0.5,964981247\n"
            "7,3,4.0,964982224\n",
            "tags.csv": "userId,movieId,tag,timestamp\n1,1,pixar,1445714994\n2,1,Pixar,1445714995\n"
            "2,1,fun,1445714996\n2,9,lost,1445714996\n",
        },
        encoding="utf-8",
    )
    dataset = load_movielens(folder)
    assert dataset.name == "ml-latest-small"
    assert [user.user_id for user in dataset.users] == ["1"]  # users are who rated
    toy = next(item for item in dataset.items if item.item_id == "1")
    assert toy.text == "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun."
    heat = next(item for item in dataset.items if item.item_id == "2")
    assert (heat.title, heat.categories) == ("Heat, The (1995)", [])
    assert {(r.file, r.line, r.field) for r in dataset.quarantined} == {
        ("ratings.csv", 4, "item_id"),
        ("tags.csv", 5, "movieId"),
    }


def test_csv_with_undecodable_line_and_wrong_header(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "latest",
        {
            "movies.csv": b"movieId,title,genres\n1,Toy Story (1995),Comedy\n"
            b"2,Caf\xe9 (1990),Drama\n",
            "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n",
        },
    )
    dataset = load_movielens(folder)
    (row,) = dataset.quarantined
    assert (row.file, row.line, row.field) == ("movies.csv", 3, "<line>")
    assert "utf-8" in row.reason
    (folder / "ratings.csv").write_text("user,movie,stars,when\n1,1,4,964982703\n")
    with pytest.raises(SourceError, match=r"ratings.csv: header is user,movie,stars,when"):
        load_movielens(folder)


def test_missing_file_is_named(tmp_path: Path) -> None:
    files = ml100k_files(GOOD_100K)
    del files["u.user"]
    with pytest.raises(SourceError, match=r"u.user: file is missing"):
        load_movielens(write(tmp_path / "ml", files))
    with pytest.raises(SourceError, match="no MovieLens files"):
        load_movielens(tmp_path / "ml" / "..")


def test_ingest_fails_over_the_rejection_limit_and_keeps_the_quarantine(tmp_path, settings) -> None:
    bad = "".join(f"1\t1\t9\t88125094{n}\n" for n in range(3))  # 3 of 6 rows out of range
    folder = write(tmp_path / "ml", ml100k_files(GOOD_100K + bad))
    with pytest.raises(SourceError, match=r"u.data: 3 of 6 rows rejected \(50.0%\)") as caught:
        ingest_movielens(settings, folder)
    quarantine = next(settings.quarantine_dir.iterdir())
    assert str(quarantine) in str(caught.value)
    records = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(r["file"], r["line"], r["field"]) for r in records] == [
        ("u.data", 4, "value"),
        ("u.data", 5, "value"),
        ("u.data", 6, "value"),
    ]
    assert not settings.warehouse_path.exists(), "nothing may land when ingest fails"
    # Under a looser limit the same files land, bad rows still quarantined.
    looser = settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"max_rejected_share": 0.6})}
    )
    report = ingest_movielens(looser, folder)
    assert (report.events_appended, report.rejected) == (3, 3)


@pytest.mark.dataset
@pytest.mark.slow
def test_real_ml100k(ml100k: Path, settings) -> None:
    report = ingest_movielens(settings, ml100k)
    assert (report.users, report.items, report.events, report.rejected) == (943, 1682, 100000, 0)
    assert report.events_appended == 100000
    again = ingest_movielens(settings, ml100k)
    assert (again.events_appended, again.events_duplicate) == (0, 100000)
