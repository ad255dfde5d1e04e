"""The retraining pipeline observer renders and the programs its steps run.

* :mod:`observer.triggers.pipeline.render`: the WorkflowTemplate (Spark preprocessing -> training ->
  evaluation gate -> KServe canary -> promote or roll back) and every manifest it creates;
* :mod:`observer.triggers.pipeline.validate`: checks rendered documents against upstream schemas;
* :mod:`observer.triggers.pipeline.preprocess`: the PySpark job of the preprocessing step;
* :mod:`observer.triggers.pipeline.evaluate`: the evaluation gate.
"""
