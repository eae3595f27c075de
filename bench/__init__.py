"""The GPU benchmark and its analyses (see RESULTS.md in this folder).

The scripts here run as files (``python bench/bench.py``) and import one another by bare name
(``from bench import ...`` finds ``bench.py`` next to them). The folder is a package only so
that the tests can import ``bench.reference`` and ``bench.plot_results``.
"""
