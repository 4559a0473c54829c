"""A simulated world of users and items whose click probabilities are known exactly.

It produces the embedded default data set (``recloop simulate``), later answers the service's
recommendations with clicks, and gives the off-policy tests their ground truth.

The world (``World``) is a pure function of its ``WorldConfig``:

- topics: each has a vocabulary; an item is a sparse mixture of topics, its title and
  description are drawn from the vocabularies of its topics, so text carries signal (what the
  cold-start text encoders learn from);
- users: a taste over topics shifted by their attributes (age group, occupation), so that
  attributes carry signal too; most users have a short profile text drawn from their taste;
- arrivals: a share of users and items exist at the start, the rest arrive uniformly over the
  simulated days (cold start happens all the time);
- drift: each user's taste moves linearly from an initial taste towards a second one; and
  optionally, at ``shift_at``, suddenly towards a trend shared by everyone (the demo's shift);
- context: each topic has a device affinity and a peak hour of day, so the same user prefers
  different items on a phone at night than on a desktop at noon;
- clicks: a position-based model, P(click at slot k) = examination(k) * attractiveness, with
  examination(k) = 1 / (k + 1) ** examination_decay and attractiveness = sigmoid(utility).
  ``click_probabilities`` returns those numbers for any slate, user, time and context.

``generate_traffic`` then logs days of requests served by an epsilon-greedy popularity policy
(exact per-slot propensities), with the impressions, clicks and ratings that followed.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from recloop.contracts import Event, EventType, Item, User

DEVICES = ("mobile", "desktop", "tv")
AGE_GROUPS = (18, 25, 35, 45, 56)  # lower bounds of the brackets users are drawn from
OCCUPATIONS = ("student", "engineer", "artist", "scientist", "teacher", "retired", "sales")
GENDERS = ("F", "M", "X")


@dataclass(frozen=True)
class Topic:
    name: str
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]


def _topic(name: str, adjectives: str, nouns: str) -> Topic:
    return Topic(name, tuple(adjectives.split()), tuple(nouns.split()))


TOPICS: tuple[Topic, ...] = (
    _topic(
        "space",
        "cosmic stellar orbital interstellar lunar galactic",
        "galaxy planet astronaut rocket nebula orbit comet starship",
    ),
    _topic(
        "crime",
        "hardboiled corrupt undercover ruthless noir criminal",
        "detective heist gangster murder alibi precinct smuggler verdict",
    ),
    _topic(
        "romance",
        "tender passionate bittersweet romantic secret unlikely",
        "love wedding kiss heart letter sweetheart proposal honeymoon",
    ),
    _topic(
        "comedy",
        "hilarious awkward absurd goofy madcap silly",
        "prank roommate blunder sitcom jester mixup party mishap",
    ),
    _topic(
        "history",
        "ancient imperial medieval victorian forgotten royal",
        "empire battle dynasty soldier castle revolution treaty legion",
    ),
    _topic(
        "nature",
        "wild remote frozen tropical endangered vast",
        "ocean forest wildlife glacier safari reef volcano migration",
    ),
    _topic(
        "horror",
        "haunted cursed sinister ghastly eerie bloody",
        "ghost demon asylum zombie ritual nightmare cellar witch",
    ),
    _topic(
        "family",
        "magical friendly brave curious tiny colourful",
        "dragon puppy toy adventure princess robot treehouse wizard",
    ),
    _topic(
        "sports",
        "underdog championship fierce olympic rookie legendary",
        "coach stadium marathon boxer league trophy striker rally",
    ),
    _topic(
        "music",
        "soulful electric rhythmic acoustic legendary underground",
        "band concert guitar singer symphony album tour jazz",
    ),
)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that decides the world; the same config always gives the same world."""

    users: int = 500
    items: int = 300
    days: int = 14
    seed: int = 42
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)
    initial_user_share: float = 0.6  # users present at the start; the rest arrive later
    initial_item_share: float = 0.7
    item_topic_concentration: float = 0.3  # Dirichlet alpha: lower = items about fewer topics
    user_taste_concentration: float = 0.5
    attribute_taste_weight: float = 0.6  # how much age and occupation shape taste
    drift: float = 0.6  # share of the way to the second taste reached on the last day
    preference_weight: float = 2.5  # utility per unit of taste-item affinity
    context_weight: float = 0.8  # utility from device and hour-of-day affinity
    quality_scale: float = 0.5  # standard deviation of item quality
    base_utility: float = -2.2  # sets the overall click-through rate
    examination_decay: float = 1.0  # position bias: examination(k) = 1 / (k + 1) ** decay
    profile_text_share: float = 0.6  # users who wrote a profile text
    # A sudden preference shift (the demo's): from shift_at on, every user's taste moves
    # shift_weight of the way towards a trend on the two topics least liked at the start.
    shift_at: datetime | None = None
    shift_weight: float = 0.7

    # Traffic (the logging policy and user activity), used by generate_traffic.
    slate_size: int = 10
    daily_active_share: float = 0.35
    requests_per_active_user: float = 1.5
    epsilon: float = 0.3  # logging policy: share of uniformly random slates
    rating_share: float = 0.5  # share of clicks followed by a rating

    # A MovieLens folder: the world's users, items and tastes come from it instead (see
    # movielens_world); users, items, the concentrations and profile_text_share are unused.
    movielens: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["start"] = self.start.isoformat()
        data["shift_at"] = self.shift_at.isoformat() if self.shift_at else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        data = dict(data)
        data["start"] = datetime.fromisoformat(data["start"])
        if data.get("shift_at"):
            data["shift_at"] = datetime.fromisoformat(data["shift_at"])
        return cls(**data)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class World:
    """Users, items and the true click model (see module docstring)."""

    config: WorldConfig
    users: list[User]
    items: list[Item]
    item_topics: np.ndarray  # (items, topics): each row sums to 1
    item_quality: np.ndarray  # (items,)
    taste_start: np.ndarray  # (users, topics): each row sums to 1
    taste_end: np.ndarray  # (users, topics)
    device_affinity: np.ndarray  # (topics, devices)
    topic_peak_hour: np.ndarray  # (topics,)
    user_devices: np.ndarray  # (users, devices): each user's device habits
    user_index: dict[str, int] = field(default_factory=dict)
    item_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.user_index = {user.user_id: n for n, user in enumerate(self.users)}
        self.item_index = {item.item_id: n for n, item in enumerate(self.items)}
        self._user_created = np.array([u.created_at.timestamp() for u in self.users])
        self._item_created = np.array([i.created_at.timestamp() for i in self.items])
        # The shift's trend, derived from the world without drawing from its generator, so
        # a config with and without a shift builds the same users and items: the two least
        # liked topics among those with at least half the average topic's items (so that a
        # catalogue offers something to shift towards: MovieLens has two "unknown" films).
        mass = self.item_topics.sum(axis=0)
        eligible = np.flatnonzero(mass >= 0.5 * mass.mean())
        least_liked = eligible[np.argsort(self.taste_start.mean(axis=0)[eligible])[:2]]
        self.trend = np.zeros(self.topics)
        self.trend[least_liked] = 0.5

    @property
    def topics(self) -> int:
        """How many topics (MovieLens: genres) items and tastes are mixtures of."""
        return self.item_topics.shape[1]

    @property
    def end(self) -> datetime:
        return self.config.start + timedelta(days=self.config.days)

    def taste(self, user_id: str, at: datetime) -> np.ndarray:
        """The user's taste over topics at a time: drifts linearly over the simulated span."""
        n = self._user(user_id)
        span = (self.end - self.config.start).total_seconds()
        progress = min(max((at - self.config.start).total_seconds() / span, 0.0), 1.0)
        weight = self.config.drift * progress
        taste = (1 - weight) * self.taste_start[n] + weight * self.taste_end[n]
        shift_at = self.config.shift_at
        if shift_at is not None and at >= shift_at:
            taste = (1 - self.config.shift_weight) * taste + self.config.shift_weight * self.trend
        return taste

    def context_affinity(self, context: dict[str, Any] | None) -> np.ndarray:
        """Per-topic utility from the request context (device and hour of day)."""
        context = context or {}
        affinity = np.zeros(self.topics)
        device = context.get("device")
        if device in DEVICES:
            affinity += self.device_affinity[:, DEVICES.index(device)]
        hour = context.get("hour")
        if hour is not None:
            affinity += 0.5 * np.cos(2 * math.pi * (float(hour) - self.topic_peak_hour) / 24)
        return affinity

    def utility(
        self,
        user_id: str,
        item_ids: Sequence[str],
        at: datetime,
        context: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Utility of each item for the user at a time and context (before position bias)."""
        rows = np.array([self._item(item_id) for item_id in item_ids], dtype=int)
        topics = self.item_topics[rows]  # (k, topics)
        # Affinity is ~1 for an item unrelated to the taste and up to `topics` when aligned.
        affinity = self.topics * topics @ self.taste(user_id, at)
        config = self.config
        return (
            config.base_utility
            + config.preference_weight * np.log(np.maximum(affinity, 1e-3))
            + config.context_weight * topics @ self.context_affinity(context)
            + self.item_quality[rows]
        )

    def examination(self, slots: int) -> np.ndarray:
        return 1.0 / np.arange(1, slots + 1) ** self.config.examination_decay

    def click_probabilities(
        self,
        user_id: str,
        item_ids: Sequence[str],
        at: datetime,
        context: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """The true probability of a click in each slot of this slate, slot 0 first."""
        return self.examination(len(item_ids)) * self.attractiveness(user_id, item_ids, at, context)

    def attractiveness(
        self,
        user_id: str,
        item_ids: Sequence[str],
        at: datetime,
        context: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """The probability of a click on each item once examined (in slot 0, say)."""
        return _sigmoid(self.utility(user_id, item_ids, at, context))

    def respond(
        self,
        user_id: str,
        item_ids: Sequence[str],
        at: datetime,
        context: dict[str, Any] | None,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Sample which slots the user clicks."""
        return rng.random(len(item_ids)) < self.click_probabilities(user_id, item_ids, at, context)

    def rating(self, user_id: str, item_id: str, at: datetime) -> float:
        """The star rating a user gives after a click: taste-driven, 1 to 5."""
        affinity = self.topics * self.item_topics[self._item(item_id)] @ self.taste(user_id, at)
        score = (
            3.0
            + 1.5 * math.tanh(math.log(max(affinity, 1e-3)))
            + self.item_quality[self._item(item_id)]
        )
        return float(min(5, max(1, round(score))))

    def users_at(self, at: datetime) -> np.ndarray:
        return np.flatnonzero(self._user_created <= at.timestamp())

    def items_at(self, at: datetime) -> np.ndarray:
        return np.flatnonzero(self._item_created <= at.timestamp())

    def _user(self, user_id: str) -> int:
        try:
            return self.user_index[user_id]
        except KeyError:
            raise KeyError(f"user_id: {user_id!r} is not a user of this world") from None

    def _item(self, item_id: str) -> int:
        try:
            return self.item_index[item_id]
        except KeyError:
            raise KeyError(f"item_id: {item_id!r} is not an item of this world") from None


# ---------------------------------------------------------------------------------------------
# Building the world


def _arrival_times(
    rng: np.random.Generator, count: int, initial_share: float, config: WorldConfig
) -> list[datetime]:
    span = config.days * 86_400
    initial = rng.random(count) < initial_share
    # Those present at the start joined during the month before it.
    offsets = np.where(initial, -rng.uniform(0, 30 * 86_400, count), rng.uniform(0, span, count))
    return [config.start + timedelta(seconds=float(s)) for s in offsets]


def _words(rng: np.random.Generator, mixture: np.ndarray, count: int) -> list[str]:
    topics = rng.choice(len(TOPICS), size=count, p=mixture)
    words = []
    for topic in topics:
        vocabulary = TOPICS[topic].adjectives + TOPICS[topic].nouns
        words.append(vocabulary[rng.integers(len(vocabulary))])
    return words


def _habits(rng: np.random.Generator, topics: int, users: int) -> dict[str, np.ndarray]:
    """The World fields that context depends on, drawn from the seed (MovieLens records none
    of them either): each topic's device affinity and peak hour, each user's device habits."""
    return {
        "device_affinity": rng.normal(0.0, 0.6, (topics, len(DEVICES))),
        "topic_peak_hour": rng.uniform(0, 24, topics),
        "user_devices": rng.dirichlet(np.ones(len(DEVICES)), users),
    }


def build_world(config: WorldConfig) -> World:
    """Create the world for a config; deterministic in ``config.seed`` (and, with
    ``config.movielens``, in that folder's files)."""
    if config.movielens is not None:
        return movielens_world(config)
    rng = np.random.default_rng(config.seed)
    n_topics = len(TOPICS)

    item_topics = rng.dirichlet(np.full(n_topics, config.item_topic_concentration), config.items)
    item_quality = rng.normal(0.0, config.quality_scale, config.items)
    item_created = _arrival_times(rng, config.items, config.initial_item_share, config)
    items = []
    for n in range(config.items):
        mixture = item_topics[n]
        main = TOPICS[int(np.argmax(mixture))]
        title = (
            f"The {main.adjectives[rng.integers(len(main.adjectives))].title()} "
            f"{main.nouns[rng.integers(len(main.nouns))].title()}"
        )
        if rng.random() < 0.5:
            title += f" of the {' '.join(_words(rng, mixture, 1)).title()}"
        description = (
            "A story of "
            + ", ".join(_words(rng, mixture, 4))
            + " and "
            + " ".join(_words(rng, mixture, 3))
            + "."
        )
        categories = [TOPICS[t].name for t in np.argsort(-mixture)[:3] if mixture[t] >= 0.25]
        items.append(
            Item(
                item_id=f"i{n:05d}",
                title=title,
                text=description,
                categories=categories or [main.name],
                created_at=item_created[n],
            )
        )

    # Attributes shift taste: each age bracket and occupation leans towards some topics.
    age_taste = rng.dirichlet(np.full(n_topics, 0.4), len(AGE_GROUPS))
    occupation_taste = rng.dirichlet(np.full(n_topics, 0.4), len(OCCUPATIONS))
    user_created = _arrival_times(rng, config.users, config.initial_user_share, config)
    taste_start = np.empty((config.users, n_topics))
    taste_end = rng.dirichlet(np.full(n_topics, config.user_taste_concentration), config.users)
    users = []
    for n in range(config.users):
        age = int(rng.integers(len(AGE_GROUPS)))
        occupation = int(rng.integers(len(OCCUPATIONS)))
        own = rng.dirichlet(np.full(n_topics, config.user_taste_concentration))
        weight = config.attribute_taste_weight
        taste = (1 - weight) * own + weight * 0.5 * (age_taste[age] + occupation_taste[occupation])
        taste_start[n] = taste / taste.sum()
        profile_text = None
        if rng.random() < config.profile_text_share:
            liked = [TOPICS[t].name for t in np.argsort(-taste_start[n])[:2]]
            profile_text = (
                f"I like {liked[0]} and {liked[1]}, especially anything with "
                + " or ".join(_words(rng, taste_start[n], 2))
                + "."
            )
        users.append(
            User(
                user_id=f"u{n:05d}",
                age=AGE_GROUPS[age] + int(rng.integers(0, 7)),
                gender=GENDERS[int(rng.integers(len(GENDERS)))],
                occupation=OCCUPATIONS[occupation],
                profile_text=profile_text,
                created_at=user_created[n],
            )
        )

    return World(
        config=config,
        users=users,
        items=items,
        item_topics=item_topics,
        item_quality=item_quality,
        taste_start=taste_start,
        taste_end=taste_end,
        **_habits(rng, n_topics, config.users),
    )


def movielens_world(config: WorldConfig) -> World:
    """A world whose users, items and tastes are a MovieLens data set's (any of the formats
    ``recloop.sources.movielens`` reads), so the loop runs on a real catalogue.

    Topics are the genres; an item is an even mixture of its genres. A user's starting taste
    is the genre mix of the films they rated 4 or more, smoothed towards everyone's (a user
    with no such rating has everyone's). An item's quality is its mean rating, shrunk towards
    the overall mean by 10 ratings' weight and scaled to ``quality_scale``. Users and items are
    all present at the start, with their attributes, titles and texts. What MovieLens does not
    record is drawn from the seed as in the synthetic world: device habits, each genre's device
    affinity and peak hour. Clicks then follow the same position-based model; there is no
    slow drift (``taste_end`` is the start), only the demo's shift when ``shift_at`` is set.
    """
    from recloop.sources.movielens import load_movielens

    data = load_movielens(config.movielens)
    if not data.users or not data.items:
        raise ValueError(f"movielens: {config.movielens} holds no users or no items")
    rng = np.random.default_rng(config.seed)
    genres = sorted({genre for item in data.items for genre in item.categories})
    column = {genre: n for n, genre in enumerate(genres)}
    item_topics = np.full((len(data.items), len(genres)), 1.0 / len(genres))
    for row, item in enumerate(data.items):
        if item.categories:
            item_topics[row] = 0.0
            item_topics[row, [column[g] for g in item.categories]] = 1.0 / len(item.categories)
    item_row = {item.item_id: n for n, item in enumerate(data.items)}
    user_row = {user.user_id: n for n, user in enumerate(data.users)}
    sums, counts = np.zeros(len(data.items)), np.zeros(len(data.items))
    liked = np.zeros((len(data.users), len(genres)))
    for event in data.events:
        if event.value is None or event.item_id not in item_row or event.user_id not in user_row:
            continue
        item = item_row[event.item_id]
        sums[item] += event.value
        counts[item] += 1
        if event.value >= 4:
            liked[user_row[event.user_id]] += item_topics[item]
    overall = sums.sum() / max(counts.sum(), 1)
    mean = (sums + 10 * overall) / (counts + 10)
    quality = (mean - mean.mean()) / max(mean.std(), 1e-9) * config.quality_scale
    everyone = liked.sum(axis=0) + 1.0
    everyone /= everyone.sum()
    taste = liked + 5 * everyone  # five liked films' worth of everyone's taste
    taste /= taste.sum(axis=1, keepdims=True)
    # Present at the start: joined during the month before it.
    joined = [config.start - timedelta(seconds=float(s)) for s in
              rng.uniform(0, 30 * 86_400, len(data.users) + len(data.items))]  # fmt: skip
    users = [user.model_copy(update={"created_at": joined[n]}) for n, user in
             enumerate(data.users)]  # fmt: skip
    items = [item.model_copy(update={"created_at": joined[len(users) + n]}) for n, item in
             enumerate(data.items)]  # fmt: skip
    return World(
        config=config,
        users=users,
        items=items,
        item_topics=item_topics,
        item_quality=quality,
        taste_start=taste,
        taste_end=taste.copy(),
        **_habits(rng, len(genres), len(users)),
    )


# ---------------------------------------------------------------------------------------------
# Traffic under a logging policy


def epsilon_greedy_slot_propensities(
    greedy: Sequence[str], shown: Sequence[str], candidates: int, epsilon: float
) -> list[list[float]]:
    """Per shown item, its exact probability in every slot of the slate (slot 0 first)
    under per-slate epsilon-greedy: with probability epsilon the slate is a uniformly random
    ordered sample of the candidates (each item is in a given slot with probability
    1 / candidates), otherwise the greedy slate. The logged propensity of the item shown in
    slot k is row k's entry k."""
    return [
        [epsilon / candidates + (1 - epsilon) * (slot_item == item) for slot_item in greedy]
        for item in shown
    ]


def _event_id(rng: np.random.Generator) -> uuid.UUID:
    return uuid.UUID(bytes=rng.bytes(16), version=4)


def _request_hour(rng: np.random.Generator) -> float:
    # More traffic in the evening than at night: a mixture around 13:00 and 20:30.
    hour = rng.normal(20.5, 2.0) if rng.random() < 0.6 else rng.normal(13.0, 3.0)
    return float(hour % 24)


def generate_traffic(world: World, *, show_progress: bool = False) -> Iterator[list[Event]]:
    """Yield each simulated day's events (impressions, clicks, ratings), in time order.

    The logging policy is epsilon-greedy over yesterday's click counts, so propensities are
    exact and the policy learns a little each day, as a deployed one would.
    """
    from rich.progress import track

    config = world.config
    rng = np.random.default_rng([config.seed, 1])
    clicks_so_far = np.zeros(len(world.items))
    rated: dict[int, set[int]] = {}
    days = range(config.days)
    if show_progress:
        days = track(days, description="simulating days", transient=True)
    for day in days:
        day_start = config.start + timedelta(days=day)
        day_end = day_start + timedelta(days=1)
        items_today = world.items_at(day_start)
        users_today = world.users_at(day_end)
        active = users_today[rng.random(len(users_today)) < config.daily_active_share]
        requests = []
        for user in active:
            for _ in range(rng.poisson(config.requests_per_active_user)):
                at = day_start + timedelta(hours=_request_hour(rng))
                if world.users[user].created_at <= at:
                    requests.append((at, int(user)))
        requests.sort()
        # Greedy ranking of the day: most clicked so far, ties by item age (older first).
        order = items_today[np.lexsort((items_today, -clicks_so_far[items_today]))]
        events: list[Event] = []
        day_clicks = np.zeros(len(world.items))
        for at, user in requests:
            seen = rated.get(user, set())
            candidates = [i for i in order if i not in seen]
            if len(candidates) < config.slate_size:
                continue
            greedy = candidates[: config.slate_size]
            if rng.random() < config.epsilon:
                shown = list(rng.choice(candidates, size=config.slate_size, replace=False))
            else:
                shown = greedy
            user_id = world.users[user].user_id
            item_ids = [world.items[i].item_id for i in shown]
            greedy_ids = [world.items[i].item_id for i in greedy]
            context = {
                "hour": at.hour,
                "weekday": at.weekday(),
                "device": DEVICES[rng.choice(len(DEVICES), p=world.user_devices[user])],
            }
            everywhere = epsilon_greedy_slot_propensities(
                greedy_ids, item_ids, len(candidates), config.epsilon
            )
            clicked = world.respond(user_id, item_ids, at, context, rng)
            request_id = f"sim-{_event_id(rng).hex[:16]}"
            common = {
                "request_id": request_id,
                "model_version": "simulator-popularity",
                "policy": f"epsilon_greedy(epsilon={config.epsilon})",
                "context": context,
            }
            for slot, (item, item_id) in enumerate(zip(shown, item_ids, strict=True)):
                slot_fields = {
                    **common,
                    "user_id": user_id,
                    "item_id": item_id,
                    "position": slot,
                    "propensity": everywhere[slot][slot],
                }
                events.append(
                    Event(
                        event_id=_event_id(rng),
                        ts=at,
                        event_type=EventType.impression,
                        slot_propensities=everywhere[slot],
                        **slot_fields,
                    )
                )
                if not clicked[slot]:
                    continue
                click_at = at + timedelta(seconds=float(rng.uniform(1, 60)))
                events.append(
                    Event(
                        event_id=_event_id(rng),
                        ts=click_at,
                        event_type=EventType.click,
                        **slot_fields,
                    )
                )
                day_clicks[item] += 1
                if rng.random() < config.rating_share:
                    rated.setdefault(user, set()).add(int(item))
                    events.append(
                        Event(
                            event_id=_event_id(rng),
                            ts=click_at + timedelta(minutes=float(rng.uniform(20, 180))),
                            event_type=EventType.rating,
                            value=world.rating(user_id, item_id, click_at),
                            **slot_fields,
                        )
                    )
        clicks_so_far += day_clicks
        events.sort(key=lambda event: (event.ts, str(event.event_id)))
        yield events
