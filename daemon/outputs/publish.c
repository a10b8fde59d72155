/* publish.c - not written yet. */
