/* jsonl.h - a sink that prints one JSON object per line: per decoded frame
 * and channel {"series_id", "series_unique_id", "image_id", "channel",
 * "height", "width", "dtype", "sum", "masked", "com_x", "com_y"}, and {"image_id",
 * "error"} for every frame that could not be decoded; series start and end
 * lines carry "event".  Used by `roid replay --jsonl`.
 *
 * Ownership: the jsonl writer borrows the FILE.  Threads: the ingest thread.
 */
#ifndef ROID_OUTPUTS_JSONL_H
#define ROID_OUTPUTS_JSONL_H

#include <stdio.h>

#include "ingest/ingest.h"

typedef struct roid_jsonl roid_jsonl;

int roid_jsonl_new(FILE *out, roid_jsonl **ret);
void roid_jsonl_free(roid_jsonl *j);
/* Fills *ret with callbacks that write to j. */
void roid_jsonl_sink(roid_jsonl *j, roid_sink *ret);

#endif
