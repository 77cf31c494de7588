"""A synthetic serving workload: shared system prompts, multi-turn conversations, parallel sampling.

Every *session* starts with one of a few system prompts (shared across sessions, so their blocks
are prefix-cache hits). A session is either a conversation of several turns, each of which
resends the whole history (system prompt, earlier user messages and the model's replies) plus a
new user message, or a one-shot request that may ask for ``n > 1`` parallel samples; a share of
the one-shot requests are sent again, unchanged, after their reply (the user regenerates the
answer, or a client retries). All lengths,
arrival times and token ids are drawn from one seed; the replies are whatever the model generates,
so a conversation's next turn is built when its previous one finishes.

Time is counted in scheduler steps: sessions arrive over the first steps, and the next turn of a
conversation arrives a few steps (the user's "think time") after the previous reply is complete.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class WorkloadConfig:
    """Shape of the synthetic workload (lengths in tokens, times in scheduler steps).

    Attributes
    ----------
    num_sessions : int
        Conversations plus one-shot requests.
    conversation_fraction : float
        Share of sessions that are multi-turn conversations.
    max_turns : int
        A conversation has 2..max_turns turns.
    num_system_prompts : int
    system_prompt_len, user_message_len, reply_len : (int, int)
        Inclusive ranges the lengths are drawn from.
    parallel_fraction : float
        Share of one-shot requests that ask for n > 1 samples.
    max_parallel : int
        Such a request asks for n in 2..max_parallel.
    mean_interarrival : float
        Mean steps between session arrivals (exponential).
    think_steps : (int, int)
        Steps between a reply and the conversation's next turn (or the resent request).
    resend_fraction : float
        Share of one-shot requests sent a second time, with the same prompt, after their reply;
        drawn from a separate random stream, so 0 changes nothing else.
    """

    num_sessions: int = 40
    conversation_fraction: float = 0.5
    max_turns: int = 4
    num_system_prompts: int = 3
    system_prompt_len: tuple[int, int] = (48, 160)
    user_message_len: tuple[int, int] = (8, 64)
    reply_len: tuple[int, int] = (8, 40)
    parallel_fraction: float = 0.3
    max_parallel: int = 3
    mean_interarrival: float = 2.0
    think_steps: tuple[int, int] = (2, 12)
    resend_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.resend_fraction <= 1.0:
            raise ValueError(f"resend_fraction must be in [0, 1], got {self.resend_fraction}")
        if self.num_sessions < 1:
            raise ValueError(f"the workload needs at least one session, got {self.num_sessions}")
        if self.max_turns < 2:
            raise ValueError(f"max_turns must be at least 2, got {self.max_turns}")
        if self.max_parallel < 2:
            raise ValueError(f"max_parallel must be at least 2, got {self.max_parallel}")
        for name in ("system_prompt_len", "user_message_len", "reply_len", "think_steps"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be a range 1 <= low <= high, got {(low, high)}")


@dataclass(eq=False)
class Request:
    """One request to the server.

    Attributes
    ----------
    request_id : int
    prompt : np.ndarray, [prompt_len], int32
    max_new_tokens : int
        Tokens generated per sample at most (the demo's workload has no stop token).
    n : int
        Parallel samples; sample i starts with the i-th most likely token, then continues greedily.
    arrival_step : int
    session : int
    turn : int
        0 for the first (or only) turn of a session.
    stop_token : int, optional
        A sample that generates this token stops there (included in its reply); None: every
        sample generates ``max_new_tokens`` tokens.
    """

    request_id: int
    prompt: np.ndarray
    max_new_tokens: int
    n: int
    arrival_step: int
    session: int
    turn: int
    stop_token: Optional[int] = None


@dataclass(eq=False)
class _Session:
    system_prompt: int
    user_messages: list[np.ndarray]  # one per turn
    reply_lens: list[int]            # one per turn
    think_steps: list[int]           # before turns 1, 2, ...
    n: int
    max_tokens: int                  # prompt + reply of the longest turn
    resend: bool = False             # every turn sends the first turn's prompt again
    history: Optional[np.ndarray] = None  # prompt + reply of the last finished turn
    turn: int = 0


@dataclass
class Workload:
    """The request source of one demo run.

    Parameters
    ----------
    config : WorkloadConfig
    vocab_size : int
        Token ids are drawn from ``[0, vocab_size)``.
    seed : int
    """

    config: WorkloadConfig
    vocab_size: int
    seed: int = 0
    _sessions: list[_Session] = field(init=False, repr=False)
    _system_prompts: list[np.ndarray] = field(init=False, repr=False)
    _pending: list[tuple[int, int]] = field(init=False, repr=False)  # heap of (step, session)
    _next_request_id: int = field(init=False, default=0, repr=False)

    def __post_init__(self) -> None:
        c = self.config
        rng = np.random.default_rng(self.seed)
        resend_rng = np.random.default_rng([self.seed, 1])

        def tokens(length_range: tuple[int, int]) -> np.ndarray:
            length = int(rng.integers(length_range[0], length_range[1] + 1))
            return rng.integers(0, self.vocab_size, length).astype(np.int32)

        self._system_prompts = [tokens(c.system_prompt_len) for _ in range(c.num_system_prompts)]
        self._sessions = []
        self._pending = []
        arrival = 0.0
        for index in range(c.num_sessions):
            conversation = rng.random() < c.conversation_fraction
            turns = int(rng.integers(2, c.max_turns + 1)) if conversation else 1
            parallel = not conversation and rng.random() < c.parallel_fraction
            system = int(rng.integers(len(self._system_prompts)))
            user_messages = [tokens(c.user_message_len) for _ in range(turns)]
            reply_lens = [int(rng.integers(c.reply_len[0], c.reply_len[1] + 1))
                          for _ in range(turns)]
            session = _Session(
                system_prompt=system,
                user_messages=user_messages,
                reply_lens=reply_lens,
                think_steps=[int(rng.integers(c.think_steps[0], c.think_steps[1] + 1))
                             for _ in range(turns - 1)],
                n=int(rng.integers(2, c.max_parallel + 1)) if parallel else 1,
                max_tokens=(len(self._system_prompts[system]) + sum(map(len, user_messages))
                            + sum(reply_lens)),
            )
            if not conversation and resend_rng.random() < c.resend_fraction:
                reply = int(resend_rng.integers(c.reply_len[0], c.reply_len[1] + 1))
                session.user_messages.append(user_messages[0])
                session.reply_lens.append(reply)
                session.think_steps.append(
                    int(resend_rng.integers(c.think_steps[0], c.think_steps[1] + 1)))
                session.resend = True
                session.max_tokens += max(0, reply - reply_lens[0])
            self._sessions.append(session)
            heapq.heappush(self._pending, (int(arrival), index))
            arrival += rng.exponential(c.mean_interarrival)

    @property
    def num_requests(self) -> int:
        """Requests the whole run will send (one per turn)."""
        return sum(len(s.user_messages) for s in self._sessions)

    @property
    def num_samples(self) -> int:
        """Samples the whole run will generate (sum of n over requests)."""
        return sum(len(s.user_messages) * s.n for s in self._sessions)

    @property
    def max_request_tokens(self) -> int:
        """An upper bound on prompt plus generated tokens of any one sample."""
        return max(s.max_tokens for s in self._sessions)

    @property
    def done(self) -> bool:
        """No request is left to arrive (some may still be in flight)."""
        return not self._pending

    def next_arrival_step(self) -> Optional[int]:
        """Step of the earliest pending arrival; None when nothing is pending."""
        return self._pending[0][0] if self._pending else None

    def arrivals(self, step: int) -> list[Request]:
        """Pop the requests that have arrived by ``step``, earliest first."""
        requests = []
        while self._pending and self._pending[0][0] <= step:
            arrival, index = heapq.heappop(self._pending)
            requests.append(self._make_request(index, arrival))
        return requests

    def finished(self, request: Request, reply: np.ndarray, step: int) -> None:
        """Record a finished request; a conversation's next turn arrives after its think time.

        Parameters
        ----------
        request : Request
        reply : np.ndarray, [max_new_tokens], int
            The generated tokens of sample 0 (what the conversation continues from).
        step : int
            The step the request finished in.
        """
        session = self._sessions[request.session]
        session.history = np.concatenate([request.prompt, np.asarray(reply, np.int32)])
        session.turn += 1
        if session.turn < len(session.user_messages):
            heapq.heappush(self._pending,
                           (step + session.think_steps[session.turn - 1], request.session))

    def _make_request(self, index: int, arrival: int) -> Request:
        session = self._sessions[index]
        history = (self._system_prompts[session.system_prompt]
                   if session.history is None or session.resend else session.history)
        request = Request(
            request_id=self._next_request_id,
            prompt=np.concatenate([history, session.user_messages[session.turn]]),
            max_new_tokens=session.reply_lens[session.turn],
            n=session.n,
            arrival_step=arrival,
            session=index,
            turn=session.turn,
        )
        self._next_request_id += 1
        return request
