"""MovieLens loader for the three public formats, with line-level rejections.

=================  ======================================  ===========
format             files                                   encoding
=================  ======================================  ===========
ml-100k            u.data, u.item, u.user (u.genre)        latin-1
ml-1m              ratings.dat, movies.dat, users.dat      latin-1
ml-latest-small    ratings.csv, movies.csv, tags.csv       utf-8
=================  ======================================  ===========

Every rating becomes a ``rating`` event with a deterministic ``event_id`` (so ingesting the
same files twice adds nothing). Item text is the title (with its year) plus genres, plus the
most frequent tags where the format has them. User attributes are the demographics where the
format has them; zip codes are not loaded (the contract leaves them out on purpose).
A user or item enters the system (``created_at``) at its first rating; an item nobody rated,
at the first rating of the data set.

A row that cannot be parsed or breaks the contract (unknown user or item, a value out of
range, a bad timestamp) is not loaded: it is returned as a ``QuarantinedRow`` with file, line
number, field and reason. Files that are missing or unreadable raise ``SourceError``.
"""

from __future__ import annotations

import csv
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recloop.contracts import Event, EventType, Item, User, validate_rows

# A fixed namespace so that event ids are the same on every machine for the same rating.
MOVIELENS_NAMESPACE = uuid.UUID("5b0b5f38-5c1e-4b53-9a43-7d6f2b8f1f10")
MAX_TAGS_IN_TEXT = 20
# Unix times outside this range are not MovieLens ratings (the data sets span 1995-2018+).
EARLIEST_TS = datetime(1990, 1, 1, tzinfo=UTC).timestamp()
LATEST_TS = datetime(2100, 1, 1, tzinfo=UTC).timestamp()

ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
ML_1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip

FORMATS: dict[str, tuple[str, ...]] = {
    "ml-100k": ("u.data", "u.item", "u.user"),
    "ml-1m": ("ratings.dat", "movies.dat", "users.dat"),
    "ml-latest-small": ("ratings.csv", "movies.csv"),
}


class SourceError(RuntimeError):
    """A source file is missing, unreadable, or too broken to ingest."""


class RowError(ValueError):
    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class QuarantinedRow:
    """A source row that was not loaded, and why."""

    source: str
    file: str
    line: int
    field: str
    reason: str
    raw: str

    def to_record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "reason": self.reason,
            "raw": self.raw,
        }


@dataclass
class FileStats:
    rows: int = 0
    rejected: int = 0

    @property
    def rejected_share(self) -> float:
        return self.rejected / self.rows if self.rows else 0.0


@dataclass
class Dataset:
    """What a source produced: contract rows, quarantined rows and per-file counts."""

    name: str
    users: list[User] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    files: dict[str, FileStats] = field(default_factory=dict)


def detect_format(path: Path) -> str:
    """The MovieLens format of a folder, from the files it holds."""
    if not path.is_dir():
        raise SourceError(f"{path}: not a folder (expected a MovieLens data set folder)")
    for name, files in FORMATS.items():
        if (path / files[0]).exists():
            return name
    expected = "; ".join(f"{name}: {', '.join(files)}" for name, files in FORMATS.items())
    raise SourceError(f"{path}: no MovieLens files found (expected one of {expected})")


def load_movielens(path: Path | str) -> Dataset:
    """Load a MovieLens folder in any of the three formats."""
    path = Path(path)
    kind = detect_format(path)
    loader = {"ml-100k": _load_100k, "ml-1m": _load_1m, "ml-latest-small": _load_latest}[kind]
    return loader(path, _Collector(kind, path))


# ---------------------------------------------------------------------------------------------
# Reading lines, with rejections


class _Collector:
    def __init__(self, source: str, root: Path):
        self.source = source
        self.root = root
        self.dataset = Dataset(name=source)

    def stats(self, name: str) -> FileStats:
        return self.dataset.files.setdefault(name, FileStats())

    def reject(self, name: str, line: int, field_name: str, reason: str, raw: str) -> None:
        self.stats(name).rejected += 1
        self.dataset.quarantined.append(
            QuarantinedRow(self.source, name, line, field_name, reason, raw[:1000])
        )

    def lines(self, name: str, encoding: str) -> Iterator[tuple[int, str]]:
        """(line number, text) of each non-blank line; undecodable lines are rejected."""
        path = self.root / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SourceError(f"{path}: file is missing") from None
        except OSError as error:
            raise SourceError(f"{path}: cannot be read ({error.strerror})") from None
        stats = self.stats(name)
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            stats.rows += 1
            try:
                yield number, raw.decode(encoding)
            except UnicodeDecodeError as error:
                self.reject(
                    name,
                    number,
                    "<line>",
                    f"not valid {encoding}: {error.reason}",
                    raw.decode(encoding, errors="replace"),
                )

    def csv_rows(self, name: str, header: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
        """Rows of a CSV file with a header line, checked against the expected header."""
        lines = self.lines(name, "utf-8")
        first = next(lines, None)
        if first is None:
            raise SourceError(f"{self.root / name}: file is empty (expected a header)")
        self.stats(name).rows -= 1  # the header is not a data row
        found = tuple(next(csv.reader([first[1]])))
        if found[: len(header)] != header:
            raise SourceError(
                f"{self.root / name}: header is {','.join(found)}, expected {','.join(header)}"
            )
        for number, text in lines:
            yield number, next(csv.reader([text]))

    def parse(
        self, name: str, rows: Iterator[tuple[int, Any]], parse: Callable[[Any], Any], raw=str
    ) -> Iterator[tuple[int, Any, Any]]:
        for number, row in rows:
            try:
                yield number, row, parse(row)
            except RowError as error:
                self.reject(name, number, error.field, error.reason, raw(row))


def _keep(
    collector: _Collector,
    table: dict,
    key: str,
    row: dict,
    name: str,
    number: int,
    text: str,
    field_name: str,
) -> None:
    """Add a keyed row; a second row with the same key is rejected, not silently merged."""
    if key in table:
        collector.reject(name, number, field_name, f"duplicate of line {table[key]['line']}", text)
        return
    table[key] = {**row, "file": name, "line": number, "raw": text}


def _split(text: str, sep: str, count: int, what: str) -> list[str]:
    parts = text.split(sep)
    if len(parts) < count:
        raise RowError(
            "<line>", f"expected {count} {sep!r}-separated fields for {what}, found {len(parts)}"
        )
    return parts


def _int(value: str, field_name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise RowError(field_name, f"{value!r} is not an integer") from None


def _float(value: str, field_name: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise RowError(field_name, f"{value!r} is not a number") from None


def _timestamp(value: str) -> datetime:
    try:
        seconds = float(value.strip())
    except ValueError:
        raise RowError("timestamp", f"{value!r} is not a Unix time") from None
    if not EARLIEST_TS <= seconds < LATEST_TS:
        raise RowError("timestamp", f"{value.strip()} is outside 1990-2100")
    return datetime.fromtimestamp(seconds, UTC)


def _id(value: str, field_name: str) -> str:
    value = value.strip()
    if not value:
        raise RowError(field_name, "is empty")
    return value


def _year_title(title: str) -> str:
    # ml-100k has a few trailing spaces and one title "unknown"; keep the title as written.
    return " ".join(title.split())


def _item_text(title: str, genres: list[str], tags: list[str]) -> str:
    text = f"{title}. Genres: {', '.join(genres) if genres else 'none listed'}."
    if tags:
        text += f" Tags: {', '.join(tags)}."
    return text


# ---------------------------------------------------------------------------------------------
# Shared assembly: ratings -> events, first-seen times -> created_at, contract validation


@dataclass
class _Rating:
    line: int
    raw: str
    user_id: str
    item_id: str
    value: float
    ts: datetime


def _assemble(
    collector: _Collector,
    ratings_file: str,
    ratings: list[_Rating],
    users: dict[str, dict[str, Any]] | None,
    items: dict[str, dict[str, Any]],
    tags: dict[str, list[str]] | None = None,
) -> Dataset:
    """Check references, build contract rows, validate them, and quarantine what fails."""
    dataset = collector.dataset
    kept: list[_Rating] = []
    for rating in ratings:
        if users is not None and rating.user_id not in users:
            collector.reject(
                ratings_file, rating.line, "user_id", f"unknown user {rating.user_id!r}", rating.raw
            )
        elif rating.item_id not in items:
            collector.reject(
                ratings_file, rating.line, "item_id", f"unknown item {rating.item_id!r}", rating.raw
            )
        else:
            kept.append(rating)

    event_rows = [
        {
            "event_id": _event_id(collector.source, r),
            "ts": r.ts,
            "user_id": r.user_id,
            "item_id": r.item_id,
            "event_type": EventType.rating,
            "value": r.value,
        }
        for r in kept
    ]
    checked = validate_rows(Event, event_rows)
    rejected = {rejection.index for rejection in checked.rejected}
    for rejection in checked.rejected:
        rating = kept[rejection.index]
        collector.reject(ratings_file, rating.line, rejection.field, rejection.reason, rating.raw)
    kept = [rating for index, rating in enumerate(kept) if index not in rejected]
    dataset.events = _without_conflicts(collector, ratings_file, kept, checked.valid)

    start = min((event.ts for event in dataset.events), default=datetime(1995, 1, 1, tzinfo=UTC))
    first_user: dict[str, datetime] = {}
    first_item: dict[str, datetime] = {}
    for event in dataset.events:
        if event.ts < first_user.get(event.user_id, datetime.max.replace(tzinfo=UTC)):
            first_user[event.user_id] = event.ts
        if event.ts < first_item.get(event.item_id, datetime.max.replace(tzinfo=UTC)):
            first_item[event.item_id] = event.ts

    if users is None:  # formats without a users file: users are who rated
        users = {
            user_id: {"user_id": user_id, "file": ratings_file, "line": 0, "raw": ""}
            for user_id in first_user
        }
    dataset.users = _validated(collector, User, users, first_user, start)
    for item_id, item in items.items():
        item["text"] = _item_text(item["title"], item["categories"], (tags or {}).get(item_id, []))
    dataset.items = _validated(collector, Item, items, first_item, start)
    _drop_orphans(collector, ratings_file, kept, users, items)
    return dataset


def _event_id(source: str, rating: _Rating) -> uuid.UUID:
    """Deterministic: loading the same file again gives the same ids (ingest is idempotent)."""
    key = f"{source}/{rating.user_id}/{rating.item_id}/{rating.ts.timestamp():.0f}"
    return uuid.uuid5(MOVIELENS_NAMESPACE, key)


def _without_conflicts(
    collector: _Collector, name: str, ratings: list[_Rating], events: list[Event]
) -> list[Event]:
    """The valid ``events`` (one per rating, in order) less those that contradict an earlier
    line: the same user, item and second (so the same event id) with another value. The event
    log would keep the first and count the other as a duplicate, losing it without a word; it
    goes to quarantine instead, naming the line kept. An exact repeat is a true duplicate and
    passes (the log drops it)."""
    first: dict[uuid.UUID, _Rating] = {}
    kept = []
    for rating, event in zip(ratings, events, strict=True):
        earlier = first.setdefault(event.event_id, rating)
        if earlier is not rating and earlier.value != rating.value:
            collector.reject(name, rating.line, "rating",
                             f"conflicts with line {earlier.line} (same user, item and second, "
                             f"rating {earlier.value:g}, kept)", rating.raw)  # fmt: skip
        else:
            kept.append(event)
    return kept


def _drop_orphans(
    collector: _Collector,
    name: str,
    ratings: list[_Rating],
    users: dict[str, dict[str, Any]],
    items: dict[str, dict[str, Any]],
) -> None:
    """Quarantine the events of users and items that their own contract rejected (a user row
    with an impossible age): loaded, they would be events of a user the warehouse never
    holds. Each is quarantined with the rejected row's file and line."""
    dataset = collector.dataset
    valid_users = {user.user_id for user in dataset.users}
    valid_items = {item.item_id for item in dataset.items}
    if len(valid_users) == len(users) and len(valid_items) == len(items):
        return
    line_of = {(r.user_id, r.item_id, r.ts): r for r in ratings}
    kept = []
    for event in dataset.events:
        if event.user_id in valid_users and event.item_id in valid_items:
            kept.append(event)
            continue
        rating = line_of[(event.user_id, event.item_id, event.ts)]
        field_name, key, rows = (
            ("user_id", event.user_id, users)
            if event.user_id not in valid_users
            else ("item_id", event.item_id, items)
        )
        row = rows[key]
        collector.reject(name, rating.line, field_name,
                         f"{field_name.removesuffix('_id')} {key!r} was rejected "
                         f"({row.get('file', '?')} line {row['line']})", rating.raw)  # fmt: skip
    dataset.events = kept


def _validated(collector, contract, rows: dict[str, dict[str, Any]], first_seen, start) -> list:
    records = []
    for key, row in rows.items():
        record = {k: v for k, v in row.items() if k not in ("line", "raw", "file")}
        record["created_at"] = first_seen.get(key, start)
        records.append(record)
    checked = validate_rows(contract, records)
    keyed = list(rows.values())
    for rejection in checked.rejected:
        row = keyed[rejection.index]
        collector.reject(
            row.get("file", "?"), row["line"], rejection.field, rejection.reason, row["raw"]
        )
    return checked.valid


def _ratings(
    collector, name, rows, split, *, raw=str, keys=("user_id", "item_id")
) -> list[_Rating]:
    """Parse rating rows (split gives user, item, value, time); `keys` name the id fields in
    rejections as the file names them, `raw` renders a row for the quarantine."""

    def parse(row) -> _Rating:
        user, item, value, ts = split(row)
        return _Rating(
            0,
            raw(row),
            _id(user, keys[0]),
            _id(item, keys[1]),
            _float(value, "rating"),
            _timestamp(ts),
        )

    found = []
    for number, _, rating in collector.parse(name, rows, parse, raw):
        rating.line = number
        found.append(rating)
    return found


# ---------------------------------------------------------------------------------------------
# The three formats


def _load_100k(root: Path, collector: _Collector) -> Dataset:
    genres = ML_100K_GENRES
    if (root / "u.genre").exists():
        listed = [line.split("|")[0] for _, line in collector.lines("u.genre", "latin-1")]
        genres = tuple(listed) or genres
        collector.dataset.files.pop("u.genre")

    users: dict[str, dict[str, Any]] = {}

    def parse_user(text: str) -> dict[str, Any]:
        user_id, age, gender, occupation, _zip = _split(text, "|", 5, "a user")[:5]
        return {
            "user_id": _id(user_id, "user_id"),
            "age": _int(age, "age"),
            "gender": gender.strip() or None,
            "occupation": occupation.strip() or None,
        }

    for number, text, user in collector.parse(
        "u.user", collector.lines("u.user", "latin-1"), parse_user
    ):
        _keep(collector, users, user["user_id"], user, "u.user", number, text, "user_id")

    items: dict[str, dict[str, Any]] = {}

    def parse_item(text: str) -> dict[str, Any]:
        parts = _split(text, "|", 5 + len(genres), "an item")
        flags = parts[5 : 5 + len(genres)]
        if any(flag not in ("0", "1") for flag in flags):
            raise RowError("genres", "genre flags must be 0 or 1")
        categories = [genre for genre, flag in zip(genres, flags, strict=True) if flag == "1"]
        return {
            "item_id": _id(parts[0], "item_id"),
            "title": _year_title(parts[1]),
            "categories": categories,
        }

    for number, text, item in collector.parse(
        "u.item", collector.lines("u.item", "latin-1"), parse_item
    ):
        _keep(collector, items, item["item_id"], item, "u.item", number, text, "item_id")

    ratings = _ratings(
        collector,
        "u.data",
        collector.lines("u.data", "latin-1"),
        lambda text: _split(text, "\t", 4, "a rating")[:4],
    )
    return _assemble(collector, "u.data", ratings, users, items)


def _load_1m(root: Path, collector: _Collector) -> Dataset:
    users: dict[str, dict[str, Any]] = {}

    def parse_user(text: str) -> dict[str, Any]:
        user_id, gender, age, occupation, _zip = _split(text, "::", 5, "a user")[:5]
        code = _int(occupation, "occupation")
        if not 0 <= code < len(ML_1M_OCCUPATIONS):
            raise RowError(
                "occupation", f"code {code} is not one of 0-{len(ML_1M_OCCUPATIONS) - 1}"
            )
        # ml-1m's age is a bracket code: the bracket's lower bound, except 1 = "under 18".
        return {
            "user_id": _id(user_id, "user_id"),
            "age": _int(age, "age"),
            "gender": gender.strip() or None,
            "occupation": ML_1M_OCCUPATIONS[code],
        }

    for number, text, user in collector.parse(
        "users.dat", collector.lines("users.dat", "latin-1"), parse_user
    ):
        _keep(collector, users, user["user_id"], user, "users.dat", number, text, "user_id")

    items: dict[str, dict[str, Any]] = {}

    def parse_item(text: str) -> dict[str, Any]:
        item_id, title, genres = _split(text, "::", 3, "a movie")[:3]
        categories = [g for g in genres.strip().split("|") if g and g != "(no genres listed)"]
        return {
            "item_id": _id(item_id, "item_id"),
            "title": _year_title(title),
            "categories": categories,
        }

    for number, text, item in collector.parse(
        "movies.dat", collector.lines("movies.dat", "latin-1"), parse_item
    ):
        _keep(collector, items, item["item_id"], item, "movies.dat", number, text, "item_id")

    ratings = _ratings(
        collector,
        "ratings.dat",
        collector.lines("ratings.dat", "latin-1"),
        lambda text: _split(text, "::", 4, "a rating")[:4],
    )
    return _assemble(collector, "ratings.dat", ratings, users, items)


def _load_latest(root: Path, collector: _Collector) -> Dataset:
    items: dict[str, dict[str, Any]] = {}

    def parse_item(row: list[str]) -> dict[str, Any]:
        if len(row) < 3:
            raise RowError("<line>", f"expected 3 fields for a movie, found {len(row)}")
        categories = [g for g in row[2].split("|") if g and g != "(no genres listed)"]
        return {
            "item_id": _id(row[0], "movieId"),
            "title": _year_title(row[1]),
            "categories": categories,
        }

    def raw_csv(row: list[str]) -> str:
        return ",".join(row)

    movies = collector.csv_rows("movies.csv", ("movieId", "title", "genres"))
    for number, row, item in collector.parse("movies.csv", movies, parse_item, raw_csv):
        _keep(
            collector, items, item["item_id"], item, "movies.csv", number, raw_csv(row), "movieId"
        )

    tags: dict[str, list[str]] = {}
    if (root / "tags.csv").exists():
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        spelled: dict[str, str] = {}

        def parse_tag(row: list[str]) -> tuple[str, str]:
            if len(row) < 4:
                raise RowError("<line>", f"expected 4 fields for a tag, found {len(row)}")
            item_id, tag = _id(row[1], "movieId"), row[2].strip()
            _timestamp(row[3])
            if item_id not in items:
                raise RowError("movieId", f"unknown item {item_id!r}")
            if not tag:
                raise RowError("tag", "is empty")
            return item_id, tag

        rows = collector.csv_rows("tags.csv", ("userId", "movieId", "tag", "timestamp"))
        for _, _, (item_id, tag) in collector.parse("tags.csv", rows, parse_tag, raw_csv):
            counts[item_id][tag.lower()] += 1
            spelled.setdefault(tag.lower(), tag)
        tags = {
            item_id: [spelled[t] for t, _ in counter.most_common(MAX_TAGS_IN_TEXT)]
            for item_id, counter in counts.items()
        }

    def split_rating(row: list[str]) -> list[str]:
        if len(row) < 4:
            raise RowError("<line>", f"expected 4 fields for a rating, found {len(row)}")
        return row[:4]

    rows = collector.csv_rows("ratings.csv", ("userId", "movieId", "rating", "timestamp"))
    ratings = _ratings(
        collector, "ratings.csv", rows, split_rating, raw=raw_csv, keys=("userId", "movieId")
    )
    return _assemble(collector, "ratings.csv", ratings, None, items, tags)
