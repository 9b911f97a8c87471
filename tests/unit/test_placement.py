"""Placing a request on an llmux node (llmux.integrations.placement), from nodes' states."""

import pytest

from llmux.integrations.placement import choose, home, rendezvous

NODES = ["http://a:3000", "http://b:3000", "http://c:3000"]


def node_state(**models) -> dict:
    """A GET /llmux/state body; each model given as (state, in_flight, queued, wait)."""
    return {
        "node": "n",
        "models": {
            m: {
                "state": s,
                "in_flight": f,
                "queued": q,
                "oldest_wait_secs": 0.0,
                "estimated_wait_secs": w,
            }
            for m, (s, f, q, w) in models.items()
        },
    }


def asleep(wait=10.0):
    return ("asleep", 0, 0, wait)


def test_the_node_where_it_is_awake_and_least_loaded():
    states = {
        NODES[0]: node_state(qwen=("awake", 5, 2, 0.0)),
        NODES[1]: node_state(qwen=("awake", 1, 0, 0.0)),
        NODES[2]: node_state(qwen=asleep()),
    }
    assert choose("qwen", NODES, states) == NODES[1]


def test_else_where_it_is_waking_soonest():
    states = {
        NODES[0]: node_state(qwen=("waking", 0, 3, 8.0)),
        NODES[1]: node_state(qwen=("waking", 0, 1, 2.0)),
        NODES[2]: node_state(qwen=asleep(1.0)),
    }
    assert choose("qwen", NODES, states) == NODES[1]


def test_asleep_everywhere_goes_home_the_same_from_any_router_in_any_order():
    states = {n: node_state(qwen=asleep(10.0)) for n in NODES}
    first = home("qwen", NODES)
    assert choose("qwen", NODES, states) == first
    assert choose("qwen", list(reversed(NODES)), states) == first
    # different models spread over the nodes
    homes = {home(f"model-{i}", NODES) for i in range(30)}
    assert homes == set(NODES)


def test_a_free_node_wakes_it_rather_than_a_busy_home():
    first = home("qwen", NODES)
    states = {n: node_state(qwen=asleep(None)) for n in NODES}  # nothing measured yet
    states[first] = node_state(qwen=asleep(5.0), llama=("awake", 2, 0, 0.0))  # home serves
    chosen = choose("qwen", NODES, states)
    assert chosen != first
    assert chosen == home("qwen", [n for n in NODES if n != first])  # the same from any router


def test_two_models_used_in_turn_settle_on_two_nodes_rather_than_evict_each_other():
    """Both models' home is the same node; once one is awake there (idle), the other
    goes to an empty node, not home, where it would put the first to sleep."""
    nodes = NODES[:2]
    pair = next(
        (f"m{i}", f"m{j}")
        for i in range(50)
        for j in range(i + 1, 50)
        if home(f"m{i}", nodes) == home(f"m{j}", nodes)
    )
    first, second = pair
    shared = home(first, nodes)
    empty = next(n for n in nodes if n != shared)
    states = {n: node_state(**{first: asleep(), second: asleep()}) for n in nodes}
    assert choose(first, nodes, states) == shared
    states[shared] = node_state(**{first: ("awake", 0, 0, 0.0), second: asleep()})
    assert choose(second, nodes, states) == empty
    states[empty] = node_state(**{first: asleep(), second: ("awake", 0, 0, 0.0)})
    assert choose(first, nodes, states) == shared and choose(second, nodes, states) == empty


def test_with_every_node_busy_a_busy_home_spills_only_past_the_factor():
    first = home("qwen", NODES)
    other = next(n for n in NODES if n != first)

    def busy(wait):
        return node_state(qwen=asleep(wait), llama=("awake", 1, 0, 0.0))

    states = {n: busy(10.0) for n in NODES}
    states[first] = busy(19.0)  # 1.9x the best: stays home
    assert choose("qwen", NODES, states, spill_factor=2.0) == first
    states[first] = busy(25.0)  # 2.5x: spills to the best
    assert choose("qwen", NODES, states, spill_factor=2.0) != first
    states[first] = busy(None)  # unknown at home, known elsewhere
    assert choose("qwen", NODES, states) != first
    assert choose("qwen", [other], states) == other


def test_unknown_nodes_are_skipped_and_with_none_known_the_hash_decides():
    first = home("qwen", NODES)
    states = {n: None for n in NODES}
    assert choose("qwen", NODES, states) == first
    known = next(n for n in NODES if n != first)
    states[known] = node_state(qwen=asleep(10.0))
    assert choose("qwen", NODES, states) == known  # the only node that answered
    states[known] = node_state(other=asleep(1.0))  # answered, but has no such model
    assert choose("qwen", NODES, states) == first
    with pytest.raises(ValueError):
        choose("qwen", [], states)


def test_the_hash_is_pinned():
    # every router instance, of any llmux version, must rank nodes alike: a change of
    # hash would move every model's home during a rolling upgrade
    assert rendezvous("qwen", NODES[0]) == 8122616764325921066
    assert home("qwen", NODES) == home("qwen", sorted(NODES, reverse=True))
