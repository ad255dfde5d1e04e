import time
from kafka import TopicPartition
import tests.test_drift_restart as T
from observer.core.bus import make_consumer

def diag(kafka, topic):
    c = make_consumer(kafka, None)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
    c.assign(tps); c.seek_to_beginning(*tps)
    ends = c.end_offsets(tps)
    got = {tp.partition: [] for tp in tps}
    idle = time.monotonic() + 3
    while time.monotonic() < idle:
        for tp, rs in c.poll(200).items():
            got[tp.partition] += [r.offset for r in rs]; idle = time.monotonic() + 3
    c.close()
    return {tp.partition: (ends[tp], len(got[tp.partition]), max(got[tp.partition] or [-1])) for tp in tps}

orig = T.expected_results
def expected_results(kafka, topics, n):
    print("DIAG llm", diag(kafka, topics.llm)); print("DIAG tools", diag(kafka, topics.tools))
    return orig(kafka, topics, n)
T.expected_results = expected_results
from tests.test_drift_restart import test_sigkill_and_restart_give_the_uninterrupted_results  # noqa
