"""Which broadcast-CA ASDUs from a site answer a broadcast the BMI sent it (pure; one
ledger per site connection, kept by the relay core).

A site speaks only for its own common addresses, with one exception: lib60870 answers a
command to the broadcast address (CA 65535) by sending the received ASDU back with the
new cause, so its confirmations of a broadcast clock synchronisation or interrogation
carry CA 65535. Such an ASDU is forwarded only when it answers, one for one, a broadcast
the relay sent on that same connection and that is still outstanding:

- an activation (cause 6) of type T makes one confirmation of T due; a deactivation
  (cause 8) one deactivation confirmation (cause 9);
- a confirmation (cause 7 or 9, positive or negative) or a refusal by the station
  (causes 44-47, the station's negative mirror) of type T uses one that is due;
- a positive activation confirmation of a type that is terminated (commands 45-69,
  interrogations 100 and 101) makes one activation termination (cause 10) of T due;
  for an interrogation it also opens its answer cause (QOI 20-36 for 100; 37-41 from
  the QCC for 101), and the termination closes it again;
- monitor-direction data (types below 45) with an open answer cause is forwarded while
  that interrogation is confirmed and not yet terminated.

Anything else with CA 65535 answers nothing (unsolicited, or a monitor cause) and stays
refused. Nothing here depends on time: an answer can only ever stand for a broadcast the
BMI really sent that site, so the count of what is due is the whole rule. A new
connection starts with an empty ledger (lib60870 does not send the answers of a lost
connection again).
"""

from __future__ import annotations

from collections import Counter

from ..iec104.asdu import HEADER_LENGTH

ACTIVATION = 6
ACTIVATION_CON = 7
DEACTIVATION = 8
DEACTIVATION_CON = 9
ACTIVATION_TERMINATION = 10
STATION_REFUSALS = range(44, 48)  # unknown type, cause, common address, object address
INTERROGATION = 100
COUNTER_INTERROGATION = 101
FIRST_CONTROL_TYPE = 45
QUALIFIER = HEADER_LENGTH + 3  # the qualifier follows the single object's 3-octet IOA


def terminated(type_id: int) -> bool:
    """Types whose activation a station may terminate (cause 10) after confirming it."""
    return 45 <= type_id <= 69 or type_id in (INTERROGATION, COUNTER_INTERROGATION)


def answer_cause(asdu: bytes) -> int | None:
    """The cause of the data that answers this interrogation (None for other types)."""
    if len(asdu) <= QUALIFIER:
        return None
    if asdu[0] == INTERROGATION:
        qoi = asdu[QUALIFIER]
        return qoi if 20 <= qoi <= 36 else None
    if asdu[0] == COUNTER_INTERROGATION:
        request = asdu[QUALIFIER] & 0x3F  # RQT: 1-4 a group, 5 the general request
        return 37 if request == 5 else 37 + request if 1 <= request <= 4 else None
    return None


class BroadcastLedger:
    """The broadcasts sent on one site connection and the answers still due for them."""

    __slots__ = ("_confirmations", "_deconfirmations", "_terminations", "_answers")

    def __init__(self) -> None:
        self._confirmations: Counter[int] = Counter()  # type id -> activation confirmations due
        self._deconfirmations: Counter[int] = Counter()  # type id -> deactivation confirmations due
        self._terminations: Counter[int] = Counter()  # type id -> activation terminations due
        self._answers: Counter[int] = Counter()  # interrogation answer cause -> open interrogations

    def sent(self, asdu: bytes) -> None:
        """The relay sent this broadcast ASDU (CA 65535) of the BMI's to the site."""
        cause = asdu[2] & 0x3F
        if cause == ACTIVATION:
            self._confirmations[asdu[0]] += 1
        elif cause == DEACTIVATION:
            self._deconfirmations[asdu[0]] += 1

    def answers(self, asdu: bytes) -> bool:
        """Whether this broadcast-CA ASDU from the site answers an outstanding broadcast;
        if so, what it answers is no longer due."""
        type_id = asdu[0]
        cause = asdu[2] & 0x3F
        if cause == ACTIVATION_CON or cause in STATION_REFUSALS:
            if not _take(self._confirmations, type_id):
                return cause in STATION_REFUSALS and _take(self._deconfirmations, type_id)
            if cause == ACTIVATION_CON and not asdu[2] & 0x40 and terminated(type_id):
                self._terminations[type_id] += 1
                if (answer := answer_cause(asdu)) is not None:
                    self._answers[answer] += 1
            return True
        if cause == DEACTIVATION_CON:
            return _take(self._deconfirmations, type_id)
        if cause == ACTIVATION_TERMINATION:
            if not _take(self._terminations, type_id):
                return False
            if (answer := answer_cause(asdu)) is not None:
                _take(self._answers, answer)
            return True
        return type_id < FIRST_CONTROL_TYPE and self._answers[cause] > 0


def _take(due: Counter[int], key: int) -> bool:
    """Use one of what is due under `key`, if any."""
    if due[key] <= 0:
        return False
    due[key] -= 1
    if not due[key]:
        del due[key]
    return True
