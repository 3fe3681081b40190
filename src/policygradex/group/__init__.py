"""Grouping of tasks from an affinity matrix.

``sdp`` holds the Peng–Wei SDP relaxation with its rounding, partition helpers and the
random-grouping baseline; ``null`` holds the permutation null test that says whether the groups
found are distinguishable from those that noise alone would produce.
"""
