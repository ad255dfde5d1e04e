"""GPU and serving metrics, and GPU economics.

Sources: NVML on the node (:mod:`collectors.gpu.nvml`), the DCGM exporter and vLLM/SGLang
series through Prometheus (:mod:`collectors.gpu.prometheus`), or a recorded NVML trace
(:mod:`collectors.gpu.replay`). All of them feed :class:`collectors.gpu.pipeline.GPUPipeline`,
which prices samples, computes the economics and writes ``observer.gpu``.
"""
