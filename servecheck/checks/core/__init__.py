"""The checks' shared machinery: the context every check reads, the options, the result types,
the statistics, the registry, and the helpers several checks lean on (token search, sampling
conventions, shared seeds, alternative hypotheses). No module here is a check; every module of
the package above is one.
"""
