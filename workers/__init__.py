"""The worker process: device pinning, model loading and caching, and the engines that run jobs."""
