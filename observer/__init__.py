"""observer: from "the model's behaviour changed" to "a retraining run is under way".

The package is split in two (see ARCHITECTURE.md):

* ``observer.core`` is the kernel every stage imports: typed configuration, topic names,
  record schemas, the Kafka bus and the embedded broker. It imports no stage.
* the rest of ``observer`` is the shell: CLI, one-process runtime, admin API and demo.
  It imports the stages (``collectors``, ``drift``, ``triggers``).
"""

__version__ = "0.1.0"
