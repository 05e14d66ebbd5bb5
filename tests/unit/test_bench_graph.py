"""The bench's synthetic graph: seeded, bounded, symmetric, with one celebrity in every list."""

from __future__ import annotations

import math

import orjson
import pytest

from service.bench.graph import (
    CELEBRITY,
    bounded_pareto_lower,
    generate,
    import_lines,
    user_name,
)
from service.domain import USER_ID_RE

SHAPES = [(2000, 50.0, 1000), (200, 10.0, 50), (5000, 20.0, 100), (300, 3.0, 10)]


@pytest.mark.parametrize(("users", "mean", "max_list"), SHAPES)
def test_same_seed_same_graph_other_seed_other_graph(
    users: int, mean: float, max_list: int
) -> None:
    first = generate(users, mean, max_list, seed=7)
    assert generate(users, mean, max_list, seed=7).friends == first.friends
    assert generate(users, mean, max_list, seed=8).friends != first.friends


@pytest.mark.parametrize(("users", "mean", "max_list"), SHAPES)
def test_list_sizes_never_pass_max_list(users: int, mean: float, max_list: int) -> None:
    graph = generate(users, mean, max_list, seed=1)
    sizes = graph.list_sizes()
    assert len(sizes) == users
    assert max(sizes) <= max_list
    assert all(len(set(graph.buddies(u))) == len(graph.buddies(u)) for u in range(users))


@pytest.mark.parametrize(("users", "mean", "max_list"), SHAPES)
def test_friendships_are_symmetric_and_never_self(users: int, mean: float, max_list: int) -> None:
    graph = generate(users, mean, max_list, seed=3)
    for user in range(users):
        for friend in graph.friends[user]:
            assert friend != user
            assert user in graph.friends[friend]


@pytest.mark.parametrize(("users", "mean", "max_list"), SHAPES)
def test_celebrity_is_in_every_other_list_and_lists_nobody(
    users: int, mean: float, max_list: int
) -> None:
    graph = generate(users, mean, max_list, seed=5)
    assert graph.buddies(CELEBRITY) == ()
    assert graph.friends[CELEBRITY] == ()
    for user in range(1, users):
        assert CELEBRITY in graph.buddies(user)


@pytest.mark.parametrize(("users", "mean", "max_list"), SHAPES)
def test_mean_list_size_is_roughly_the_requested_one(
    users: int, mean: float, max_list: int
) -> None:
    graph = generate(users, mean, max_list, seed=11)
    sizes = graph.list_sizes()
    measured = sum(sizes) / len(sizes)
    assert measured == pytest.approx(mean, rel=0.12)


def test_sizes_follow_a_heavy_tail() -> None:
    sizes = sorted(generate(20_000, 50.0, 1000, seed=1).list_sizes()[1:])
    median, top = sizes[len(sizes) // 2], sizes[-1]
    # A power law: most lists well below the mean, a few close to the cap.
    assert median < 50 < top
    assert top > 500


def test_bounded_pareto_lower_bound_gives_the_mean() -> None:
    low = bounded_pareto_lower(49.0, 999.0)
    assert low * 999 * math.log(999 / low) / (999 - low) == pytest.approx(49.0, rel=1e-6)
    with pytest.raises(ValueError, match="mean"):
        bounded_pareto_lower(1000.0, 999.0)


def test_import_lines_cover_every_edge_with_valid_ids() -> None:
    graph = generate(300, 8.0, 40, seed=2)
    lines = list(import_lines(graph, "t-"))
    assert len(lines) == graph.edge_count()
    edges = set()
    for line in lines:
        assert line.endswith(b"\n")
        record = orjson.loads(line)
        assert set(record) == {"user", "buddy"}
        assert USER_ID_RE.fullmatch(record["user"]) and USER_ID_RE.fullmatch(record["buddy"])
        assert record["user"] != record["buddy"]
        edges.add((record["user"], record["buddy"]))
    assert len(edges) == len(lines)
    for user in range(1, graph.users):
        assert (user_name("t-", user), user_name("t-", CELEBRITY)) in edges


def test_generate_refuses_impossible_shapes() -> None:
    with pytest.raises(ValueError, match="at least 2 users"):
        generate(1, 5.0, 10, seed=1)
    with pytest.raises(ValueError, match="max_list"):
        generate(10, 5.0, 0, seed=1)
