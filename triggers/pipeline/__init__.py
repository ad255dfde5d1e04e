"""The retraining pipeline observer renders and the programs its steps run.

* :mod:`triggers.pipeline.render`: the WorkflowTemplate (Spark preprocessing -> training ->
  evaluation gate -> KServe canary -> promote or roll back) and every manifest it creates;
* :mod:`triggers.pipeline.validate`: checks rendered documents against upstream schemas;
* :mod:`triggers.pipeline.preprocess`: the PySpark job of the preprocessing step;
* :mod:`triggers.pipeline.evaluate`: the evaluation gate.
"""
