/* control.c - not written yet. */
