"""Quality: evaluation scores per eval name and segment, user feedback, and retrieval.

The series come from the drift engine's ``evals`` and ``retrievals`` streams
(:mod:`observer.drift.quality_metrics`): ``observer_quality_*`` carry ``segment`` (the segment
key without the eval name, e.g. ``shop|gpt-4o``) and ``eval``; the drift series of the
``evals`` record type carry the full segment key (``shop|gpt-4o|faithfulness``).
"""

from __future__ import annotations

from observer.dashboards.spec import FILTERS, DashboardSpec, PanelSpec, Query, RowSpec

S = FILTERS["segment"]
RATE = "[$__rate_interval]"
EVALS = f'{S}, record_type="evals"'
SCORES = "observer_retrieval_score_bucket"


def _score_quantile(stat: str, q: float) -> Query:
    return Query(f"histogram_quantile({q}, sum by (segment, le) "
                 f'(rate({SCORES}{{{S}, stat="{stat}"}}{RATE})))',
                 f"p{int(q * 100)} {{{{segment}}}}")


DASHBOARD = DashboardSpec(
    uid="observer-quality",
    title="observer / Quality",
    description="Answer quality from evaluation scores and user feedback joined to their "
    "segment (observer.evals-joined), and retrieval quality from observer.retrievals.",
    variables=["cluster", "segment"],
    rows=[
        RowSpec("Evaluation scores", [
            PanelSpec("Mean score per eval and segment", "How do the judges score the answers "
                      "of each segment, eval by eval (mean of the last window)?",
                      [Query(f"observer_quality_score_mean{{{S}}}", "{{segment}} {{eval}}")]),
            PanelSpec("Score minus its reference", "How far is each eval's score from where it "
                      "started (the score test's reference mean; below 0 is worse where higher "
                      "is better)?",
                      [Query(f"observer_quality_score_mean{{{S}}} - "
                             f"observer_quality_score_reference{{{S}}}", "{{segment}} {{eval}}")]),
            PanelSpec("Score fell", "In which segment and eval did the score test find the "
                      "score worse than its reference in the last window?",
                      [Query(f'observer_drift_degradation_detected{{{EVALS}, signal="score_fell"}}',
                             "{{segment}}")],
                      kind="statushistory", width=12, thresholds=[1]),
            PanelSpec("Label mix drift", "Did the mix of labels the judges give (faithful, "
                      "hallucinated, relevant...) move away from the reference?",
                      [Query(f'observer_drift_statistic{{{EVALS}, feature="label"}}',
                             "{{segment}} {{method}}")], min=0),
        ]),
        RowSpec("Feedback", [
            PanelSpec("Thumbs-down rate", "What share of the users' feedback is thumbs-down, "
                      "per segment (last window)?",
                      [Query(f"observer_quality_thumbs_down_rate{{{S}}}", "{{segment}} {{eval}}")],
                      unit="percentunit", min=0, max=1),
            PanelSpec("Thumbs-down rate (detector level)", "Where does the change detector put "
                      "the thumbs-down rate now, and did it detect a rise?",
                      [Query(f'observer_drift_degradation_level{{{EVALS}, '
                             f'signal="thumbs_down_rate"}}', "level {{segment}}"),
                       Query(f'observer_drift_degradation_detected{{{EVALS}, '
                             f'signal="thumbs_down_rate"}}', "rise detected {{segment}}")],
                      unit="percentunit", min=0, max=1),
        ]),
        RowSpec("Retrieval", [
            PanelSpec("Top retrieval score (p10, p50)", "How well do the best documents match "
                      "the queries, and is that falling?",
                      [_score_quantile("max", q) for q in (0.1, 0.5)], width=8),
            PanelSpec("Mean retrieval score (p50)", "How well do all returned documents match?",
                      [_score_quantile("mean", 0.5)], width=8),
            PanelSpec("Top score margin (p50)", "How clearly does the best document beat the "
                      "next (a small margin is an ambiguous retrieval)?",
                      [_score_quantile("margin", 0.5)], width=8),
            PanelSpec("Retrieval drift per feature", "Which retrieval features (scores, k, top "
                      "document, data source) moved away from the reference?",
                      [Query(f'observer_drift_statistic{{{S}, record_type="retrievals"}}',
                             "{{segment}} {{feature}} {{method}}")], min=0),
            PanelSpec("Top documents falling out of the top-k", "Which of the documents most "
                      "often retrieved at first are returned less now (share of retrievals "
                      "listing them then minus now; 1 = never returned any more)?",
                      [Query(f"topk(10, observer_retrieval_top_document_share_drop{{{S}}})",
                             "{{segment}} {{document}}")],
                      unit="percentunit", kind="table"),
        ]),
    ],
)
