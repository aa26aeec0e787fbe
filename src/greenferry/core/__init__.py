"""Pure domain code shared by the simulator and the daemon: no I/O, no wall clock."""
