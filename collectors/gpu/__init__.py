"""GPU and serving metrics, and GPU economics.

Sources: NVML on the node (:mod:`observer.collectors.gpu.nvml`), the DCGM exporter and vLLM/SGLang
series through Prometheus (:mod:`observer.collectors.gpu.prometheus`), or a recorded NVML trace
(:mod:`observer.collectors.gpu.replay`). All of them feed :class:`observer.collectors.gpu.pipeline.GPUPipeline`,
which prices samples, computes the economics and writes ``observer.gpu``.
"""
