"""The fan-out state machine, without sockets or an event loop."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from scoreboard.fanout import NOT_READING, SEND_FAILED, TOO_SLOW, CatchUp, Close, Fanout, Publish, State


class Peer:
    """A subscriber as the state machine sees it: just a hashable object with a buffer."""

    def __init__(self, name: str, buffer: int = 0) -> None:
        self.name = name
        self.buffer = buffer

    def __repr__(self) -> str:
        return f"Peer({self.name!r}, {self.buffer})"


def buffered(peer: Peer) -> int:
    return peer.buffer


def machine(
    *, high_water: int = 100, stuck_timeout_s: float = 5.0, hard_limit: int | None = None
) -> Fanout[Peer]:
    return Fanout(high_water=high_water, stuck_timeout_s=stuck_timeout_s, hard_limit=hard_limit)


# -- transitions, one by one ---------------------------------------------------


def test_current_subscribers_are_sent_the_event_in_order() -> None:
    fan = machine()
    a, b = Peer("a"), Peer("b", buffer=100)  # at the high water is not over it
    fan.add(a)
    fan.add(b)
    assert fan.publish(0.0, buffered) == Publish((a, b), (), ())
    assert (fan.state(a), fan.state(b), fan.state(Peer("c"))) == (State.CURRENT, State.CURRENT, None)
    assert (len(fan), fan.behind, fan.conflations, fan.deliveries) == (2, 0, 0, 0)
    assert fan.sent(a, buffered) is None
    assert fan.sent(b, buffered, events=2) is None
    assert fan.deliveries == 3


def test_a_subscriber_over_the_high_water_falls_behind_then_catches_up_with_one_snapshot() -> None:
    fan = machine()
    slow, ok = Peer("slow", buffer=101), Peer("ok")
    fan.add(slow)
    fan.add(ok)
    assert fan.publish(1.0, buffered) == Publish((ok,), (slow,), ())
    assert (fan.state(slow), fan.behind_since(slow), fan.behind, fan.conflations) == (State.BEHIND, 1.0, 1, 1)
    # Skipped while behind, however small its buffer got in between.
    slow.buffer = 0
    assert fan.publish(2.0, buffered) == Publish((ok,), (), ())
    # Not drained enough: the low water is a quarter of the high water.
    slow.buffer = 26
    assert fan.catch_up(3.0, buffered) == CatchUp((), ())
    slow.buffer = 25
    assert fan.catch_up(3.0, buffered) == CatchUp((slow,), ())
    assert (fan.state(slow), fan.behind_since(slow), fan.behind) == (State.CURRENT, None, 0)
    # Only once.
    assert fan.catch_up(3.0, buffered) == CatchUp((), ())
    assert fan.publish(4.0, buffered) == Publish((slow, ok), (), ())
    assert fan.conflations == 1


def test_a_subscriber_behind_for_longer_than_the_timeout_is_closed() -> None:
    fan = machine(stuck_timeout_s=5.0)
    stuck = Peer("stuck", buffer=1000)
    fan.add(stuck)
    fan.publish(10.0, buffered)
    assert fan.catch_up(15.0, buffered) == CatchUp((), ())  # exactly the timeout: not yet
    assert fan.catch_up(15.5, buffered) == CatchUp((), (Close(stuck, TOO_SLOW, "subscriber too slow", 5.5),))
    assert (fan.state(stuck), fan.behind) == (State.CLOSING, 0)
    # A closing subscriber is looked at no more, and sent nothing.
    assert fan.catch_up(100.0, buffered) == CatchUp((), ())
    assert fan.publish(100.0, buffered) == Publish((), (), ())
    assert fan.failed(stuck) is None
    assert fan.remove(stuck)
    assert len(fan) == 0


def test_the_hard_limit_closes_after_a_write_and_wherever_a_buffer_is_seen() -> None:
    fan = machine(high_water=100, hard_limit=300)
    writer, current, behind = Peer("writer"), Peer("current"), Peer("behind", buffer=200)
    for peer in (writer, current, behind):
        fan.add(peer)
    assert fan.publish(0.0, buffered) == Publish((writer, current), (behind,), ())
    writer.buffer = 301
    assert fan.sent(writer, buffered) == Close(writer, NOT_READING, "not reading")
    assert fan.deliveries == 1  # the event was written all the same
    current.buffer = behind.buffer = 400
    assert fan.publish(1.0, buffered) == Publish((), (), (Close(current, NOT_READING, "not reading"),))
    assert fan.catch_up(1.0, buffered) == CatchUp((), (Close(behind, NOT_READING, "not reading"),))
    assert [fan.state(p) for p in (writer, current, behind)] == [State.CLOSING] * 3
    assert fan.behind == 0


def test_without_a_hard_limit_buffers_are_not_even_read_after_a_write() -> None:
    fan = machine(hard_limit=None)
    peer = Peer("p")
    fan.add(peer)

    def unreadable(_: Peer) -> int:
        raise AssertionError("not to be called")

    assert fan.sent(peer, unreadable) is None


def test_a_failed_write_closes_with_1011() -> None:
    fan = machine()
    peer = Peer("p")
    fan.add(peer)
    assert fan.failed(peer) == Close(peer, SEND_FAILED, "send failed")
    assert fan.state(peer) is State.CLOSING
    assert fan.failed(peer) is None
    fan.remove(peer)
    assert fan.failed(peer) is None


def test_removal_is_idempotent_and_adding_again_starts_afresh() -> None:
    fan = machine()
    peer = Peer("p", buffer=500)
    assert not fan.remove(peer)
    fan.add(peer)
    fan.publish(0.0, buffered)
    assert fan.state(peer) is State.BEHIND
    fan.add(peer)  # subscribing again: the driver sends it what it needs
    assert (fan.state(peer), fan.behind) == (State.CURRENT, 0)
    assert fan.remove(peer)
    assert not fan.remove(peer)
    assert peer not in fan and len(fan) == 0


def test_a_write_to_a_subscriber_gone_meanwhile_counts_but_looks_at_nothing() -> None:
    fan = machine(hard_limit=10)
    peer = Peer("p", buffer=50)
    fan.add(peer)
    fan.remove(peer)  # say, from inside its own send_event
    assert fan.sent(peer, buffered) is None
    assert fan.deliveries == 1
    assert fan.state(peer) is None


def test_subscribers_may_be_removed_from_inside_buffered() -> None:
    fan = machine(hard_limit=1000)
    peers = [Peer(str(i), buffer=0) for i in range(4)]
    for peer in peers:
        fan.add(peer)

    def buffered_and_remove_the_next(peer: Peer) -> int:
        i = peers.index(peer)
        fan.remove(peers[(i + 1) % len(peers)])
        return peer.buffer

    plan = fan.publish(0.0, buffered_and_remove_the_next)
    assert plan == Publish((peers[0], peers[2]), (), ())
    assert [p for p in peers if p in fan] == [peers[0], peers[2]]

    def remove_itself(peer: Peer) -> int:
        fan.remove(peer)
        return 0

    assert fan.publish(0.5, remove_itself) == Publish((), (), ())
    assert len(fan) == 0
    for peer in peers[0], peers[2]:
        fan.add(peer)
    assert fan.sent(peers[0], remove_itself) is None
    peers[2].buffer = 500
    fan.publish(1.0, buffered)
    assert fan.catch_up(2.0, remove_itself) == CatchUp((), ())
    assert (len(fan), fan.behind) == (0, 0)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="high_water must be"):
        machine(high_water=-1)
    with pytest.raises(ValueError, match="stuck_timeout_s must be"):
        machine(stuck_timeout_s=-0.1)
    with pytest.raises(ValueError, match="hard_limit must be"):
        machine(hard_limit=-1)


# -- properties over random histories -------------------------------------------

NAMES = ["a", "b", "c", "d", "e"]
# Trouble is the exception, or subscribers would rarely stay long enough to
# fall behind and catch up: most rounds no write fails and nobody leaves
# from inside a write (`leave[a] = b`: writing to a makes b leave).
FAIL = st.one_of(st.just(frozenset[str]()), st.frozensets(st.sampled_from(NAMES), max_size=1))
LEAVE = st.one_of(
    st.just(dict[str, str]()), st.dictionaries(st.sampled_from(NAMES), st.sampled_from(NAMES), max_size=1)
)


@dataclass
class Client:
    """What a subscriber's peer receives, and checks: (kind, seq) per event."""

    peer: Peer
    received: list[tuple[str, int]] = field(default_factory=list)

    def apply(self, kind: str, seq: int) -> None:
        if kind == "diff":
            # A diff must follow the previous event without a gap.
            assert self.received, "a diff before any snapshot"
            assert seq == self.received[-1][1] + 1, (self.received, seq)
        else:
            assert not self.received or seq >= self.received[-1][1]
        self.received.append((kind, seq))


class FanoutModel(RuleBasedStateMachine):
    """A model driver: writes grow the peers' buffers, peers drain, leave and fail at random.

    It applies the machine's decisions as `broadcast.Broadcaster` does: the
    writes in a loop (skipping whoever is no longer CURRENT), the closes after.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fan: Fanout[Peer] = Fanout()
        self.peers = {name: Peer(name) for name in NAMES}
        self.clients: dict[Peer, Client] = {}  # subscribed ones, by the driver's account
        # BEHIND ones by the driver's account, from the decisions it got, with
        # how many events each had received when it fell behind.
        self.behind: dict[Peer, int] = {}
        self.seq = 0
        self.now = 0.0
        self.writes = 0
        self.fell_behind = 0

    @initialize(
        high_water=st.integers(20, 300),
        hard_extra=st.one_of(st.none(), st.integers(0, 600)),
        stuck=st.sampled_from([0.0, 1.0, 3.0]),
        size=st.integers(1, 60),
    )
    def setup(self, high_water: int, hard_extra: int | None, stuck: float, size: int) -> None:
        """Limits at random; everyone subscribes."""
        hard = None if hard_extra is None else high_water + hard_extra
        self.fan = Fanout(high_water=high_water, stuck_timeout_s=stuck, hard_limit=hard)
        self.subscribe(NAMES, size)

    # -- the driver -------------------------------------------------------

    def _write(
        self, peer: Peer, kind: str, size: int, *, fail: bool = False, leave: Peer | None = None
    ) -> bool:
        """Write one event to `peer`, maybe failing or making someone leave meanwhile."""
        assert peer not in self.behind, "a BEHIND subscriber was written to"
        if fail:
            return False
        peer.buffer += size
        self.clients[peer].apply(kind, self.seq)
        self.writes += 1
        if leave is not None:  # re-entrantly, from inside send_event
            self._leave(leave)
        return True

    def _leave(self, peer: Peer) -> None:
        self.fan.remove(peer)
        self.clients.pop(peer, None)
        self.behind.pop(peer, None)

    def _close(self, closes: list[Close[Peer] | None]) -> None:
        for close in closes:
            if close is None:
                continue
            peer = close.sub
            # It may have been removed since (another subscriber's write made it
            # leave); it is closed all the same.
            assert self.fan.state(peer) in (State.CLOSING, None)
            if close.code == NOT_READING:
                assert self.fan.hard_limit is not None and peer.buffer > self.fan.hard_limit
            elif close.code == TOO_SLOW:
                assert close.behind_s is not None and close.behind_s > self.fan.stuck_timeout_s
            else:
                assert close.code == SEND_FAILED
            self._leave(peer)

    def _send_all(
        self,
        recipients: tuple[Peer, ...],
        kind: str,
        size: int,
        fail: frozenset[str],
        leave: Mapping[str, str],
    ) -> list[Close[Peer] | None]:
        closes: list[Close[Peer] | None] = []
        for peer in recipients:
            if self.fan.state(peer) is not State.CURRENT:
                continue
            gone = self.peers[leave[peer.name]] if peer.name in leave else None
            if self._write(peer, kind, size, fail=peer.name in fail, leave=gone):
                closes.append(self.fan.sent(peer, buffered))
            else:
                closes.append(self.fan.failed(peer))
        return closes

    # -- rules --------------------------------------------------------------

    @rule(names=st.lists(st.sampled_from(NAMES), min_size=1, unique=True), size=st.integers(1, 60))
    def subscribe(self, names: list[str], size: int) -> None:
        """Some peers subscribe (again) and are sent a first snapshot, as the driver does."""
        for name in names:
            peer = self.peers[name]
            self.fan.add(peer)
            self.behind.pop(peer, None)
            self.clients[peer] = Client(peer)
            self._close([self.fan.sent(peer, buffered)] if self._write(peer, "snapshot", size) else [])

    @rule(name=st.sampled_from(NAMES))
    def unsubscribe(self, name: str) -> None:
        self._leave(self.peers[name])

    @rule(names=st.sets(st.sampled_from(NAMES), min_size=1), left=st.integers(0, 400))
    def peers_read(self, names: set[str], left: int) -> None:
        """Some peers read until at most `left` bytes are left in their buffers."""
        for name in names:
            peer = self.peers[name]
            peer.buffer = min(peer.buffer, left)

    @rule(name=st.sampled_from(NAMES), size=st.integers(1, 400))
    def other_frames_pile_up(self, name: str, size: int) -> None:
        """Frames the driver does not know of (acks, pongs) fill a buffer too."""
        self.peers[name].buffer += size

    @precondition(lambda self: bool(self.clients))
    @rule(
        size=st.integers(1, 60),
        fail=FAIL,
        leave=LEAVE,
        leave_while_deciding=st.sampled_from([None, None, None, *NAMES]),
    )
    def publish(
        self, size: int, fail: frozenset[str], leave: Mapping[str, str], leave_while_deciding: str | None
    ) -> None:
        self.seq += 1
        before = {peer: self.fan.state(peer) for peer in self.clients}

        def buffered_maybe_removing(peer: Peer) -> int:
            nonlocal leave_while_deciding
            if leave_while_deciding is not None:
                self._leave(self.peers[leave_while_deciding])
                leave_while_deciding = None
            return peer.buffer

        plan = self.fan.publish(self.now, buffered_maybe_removing)
        self.fell_behind += len(plan.fell_behind)
        for peer in plan.fell_behind:
            assert before[peer] is State.CURRENT and peer.buffer > self.fan.high_water
            if peer in self.clients:  # not removed by `buffered` for a later one
                self.behind[peer] = len(self.clients[peer].received)
        for peer in plan.send:
            assert before[peer] is State.CURRENT and peer not in self.behind
        assert len(set(plan.send)) == len(plan.send)
        closes = [*plan.close, *self._send_all(plan.send, "diff", size, fail, leave)]
        self._close(closes)
        # Every subscriber still CURRENT got this event, right after the one before it.
        for peer, client in self.clients.items():
            if self.fan.state(peer) is State.CURRENT:
                assert before.get(peer) is State.CURRENT
                assert client.received[-1] == ("diff", self.seq)
                hard = self.fan.hard_limit
                assert hard is None or peer.buffer <= hard
            elif before.get(peer) is State.BEHIND:
                assert client.received[-1][1] < self.seq  # skipped

    @rule(
        seconds=st.sampled_from([0.0, 0.5, 1.0, 2.5]),
        size=st.integers(1, 60),
        fail=FAIL,
        leave=LEAVE,
    )
    def tick(self, seconds: float, size: int, fail: frozenset[str], leave: Mapping[str, str]) -> None:
        """Time passes; while anyone is behind, the driver's timer calls `catch_up`."""
        self.now += seconds
        if not self.behind:
            return
        decision = self.fan.catch_up(self.now, buffered)
        assert len(set(decision.snapshot)) == len(decision.snapshot)
        for peer in decision.snapshot:
            assert peer in self.behind and peer.buffer <= self.fan.low_water
            del self.behind[peer]
        closes = [*decision.close, *self._send_all(decision.snapshot, "snapshot", size, fail, leave)]
        self._close(closes)
        # Nobody stays behind past the timeout or over the hard limit.
        hard = self.fan.hard_limit
        for peer in self.behind:
            since = self.fan.behind_since(peer)
            assert since is not None and self.now - since <= self.fan.stuck_timeout_s
            assert hard is None or peer.buffer <= hard

    # -- invariants -----------------------------------------------------------

    @invariant()
    def the_driver_and_the_machine_agree(self) -> None:
        # Closes are applied as soon as they are decided: nobody lingers CLOSING.
        assert {p for p in self.peers.values() if p in self.fan} == set(self.clients)
        assert len(self.fan) == len(self.clients)
        assert {p for p in self.clients if self.fan.state(p) is State.BEHIND} == set(self.behind)
        assert self.fan.behind == len(self.behind)
        assert self.fan.deliveries == self.writes
        assert self.fan.conflations == self.fell_behind

    @invariant()
    def behind_subscribers_receive_nothing(self) -> None:
        for peer, count in self.behind.items():
            assert len(self.clients[peer].received) == count


TestFanoutModel = FanoutModel.TestCase
TestFanoutModel.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
