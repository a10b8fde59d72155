/* feedback.c - not written yet. */
