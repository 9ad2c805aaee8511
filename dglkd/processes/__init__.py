"""Several processes for one run, under one supervisor: DDP ranks on this host
(``--nproc``, :mod:`dglkd.processes.ranks`) and DistDGL's servers and trainers
(``dglkd launch --local``, :mod:`dglkd.processes.distdgl`), both started, watched and
stopped by :class:`dglkd.processes.supervisor.Supervisor`."""
