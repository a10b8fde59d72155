/* daemon.c - not written yet. */
