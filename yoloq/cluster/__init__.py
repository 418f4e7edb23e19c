"""Beyond one machine: the variant matrix on a Ray cluster (``yoloq run CONFIG --ray``).

``ship`` packs what travels between nodes, ``tasks`` is what a node runs, ``connect`` the driver's
handle on the cluster and ``driver`` the run itself. Ray is imported only when a cluster is used.
"""
