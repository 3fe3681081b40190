"""Grouping of tasks from an affinity matrix.

``sdp`` holds the Peng–Wei SDP relaxation (``group_tasks``), with its solve in ``solve``, its
rounding to a partition in ``rounding`` and the partition helpers and random-grouping baseline
in ``partitions``; ``null`` holds the permutation null test that says whether the groups found
are distinguishable from those that noise alone would produce.
"""
