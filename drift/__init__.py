"""Drift scoring: exact statistics, count windows and the streaming drift engine.

- :mod:`observer.drift.stats`: PSI, Jensen-Shannon distance and normalised Wasserstein, computed with
  Evidently 0.7's rules so that the numbers agree with Evidently and SciPy on the same data.
- :mod:`observer.drift.window`: a count window that closes after ``window_size`` records.
- :mod:`observer.drift.scoring`: one closed window scored against a reference, feature by feature.
- :mod:`observer.drift.sketch`: sketch mode's bounded, mergeable summaries (numeric and categorical),
  and the budget choosing exact or sketch mode per stream.
- :mod:`observer.drift.sketch_scoring`: drift scored from sketches, with an error bound against exact
  mode.
- :mod:`observer.drift.record_types`: the record types scored (llm, tools, paths, predictions, gpu),
  their topics, and how a record becomes feature rows (``inputs.age``: one per instance).
- :mod:`observer.drift.engine`: :class:`~observer.drift.engine.DriftEngine`, the consuming stage that reads
  the record topics with features configured and writes ``observer.drift``.
- :mod:`observer.drift.metrics`: the Prometheus metrics the engine exports.
- :mod:`observer.drift.stream`, :mod:`observer.drift.restore`, :mod:`observer.drift.duplicates`,
  :mod:`observer.drift.published`: a stream's state and checkpoint records, its rebuild from
  checkpoints after a restart or rebalance, and the suppression of results published twice.
- :mod:`observer.drift.reports`: Evidently HTML reports, one per drift episode (admin
  ``/reports/{id}``, ``observer drift score --report-dir``).
- :mod:`observer.drift.references`, :mod:`observer.drift.reference_commands`: versioned
  references (provenance, pin, history) and the commands that pin or re-baseline them;
  :mod:`observer.drift.reference_client`, :mod:`observer.drift.reference_cli`,
  :mod:`observer.drift.reference_routes`: ``observer references`` and ``/api/v1/references``.
- :mod:`observer.drift.quality`, :mod:`observer.drift.mean_test`,
  :mod:`observer.drift.quality_metrics`: evaluation scores as a quality signal (record type
  ``evals``): which way is worse per eval name, the thumbs-down rule, the one-sided score test
  with its stated false-alarm rate, and the quality and retrieval metrics of the dashboard.
"""
