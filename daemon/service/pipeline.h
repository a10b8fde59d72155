/* pipeline.h - the daemon's threads after ingest: feature workers, the
 * analysis thread and (through outputs/writer.h) the HDF5 writer, joined by
 * bounded queues.
 *
 *   loop thread (ingest: socket, parse, series)  --work queue-->  N workers
 *   (decode, features, scan point)  --analysis queue-->  analysis thread (RoI
 *   state, feedback, PUB socket, snapshots)  --writer queue-->  writer thread
 *
 * The work queue carries frames zero-copy: the ZeroMQ part holding a frame is
 * moved into the job (roid_zsource_take) and closed by the worker.  Series
 * start and end travel as barriers through the same queue, so the analysis
 * thread sees every series' frames between its start and its end however
 * many workers run.
 *
 * Handoffs are batched (queue.h's *_many): the loop pushes frames a batch at
 * a time, a worker takes a run of them and pushes their records at once, the
 * analysis thread pops many at once; one lock and at most one wake-up per
 * batch, not per frame.
 *
 * Queue-full policy.  Work queue: `wait` (default) keeps the job in a small
 * pending list and the loop stops reading the detector socket until a worker
 * frees a slot (roid_pipeline_blocked; the wake-up callback runs on the worker
 * and must be async-signal-like, e.g. uv_async_send): ZeroMQ's receive
 * high-water mark and then the detector's send buffer absorb the burst, and
 * nothing is lost.  `drop` discards the frame instead and counts it in
 * frames_dropped; series start and end are never dropped.  Analysis and
 * writer queues: producers wait (their consumers never wait on anything but
 * their own input, so there is no cycle).
 *
 * Ownership: the pipeline owns its threads, queues, per-series state and the
 * publisher handed to it (used by the analysis thread only from then on).
 * Threads: every function here is for the loop thread, except where noted.
 */
#ifndef ROID_SERVICE_PIPELINE_H
#define ROID_SERVICE_PIPELINE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "analysis/analysis.h"
#include "analysis/feedback.h"
#include "ingest/ingest.h"
#include "ingest/zsource.h"
#include "outputs/publish.h"
#include "service/config.h"
#include "service/counters.h"

typedef struct roid_pipeline roid_pipeline;

/* Starts the threads.  cfg gives workers, queues, intervals and the analysis
 * parameters of the first series; pub may be NULL (no publishing); the
 * pipeline takes it over.  config_text (may be NULL) is stored in results
 * files. */
int roid_pipeline_new(const roid_config *cfg, roid_counters *ctr, roid_publisher *pub, roid_pipeline **ret,
                      roid_err *err);
/* Stops: flushes what is queued (series in progress are closed as
 * unterminated by the caller's roid_ingest_flush before), joins the threads,
 * closes the results file. */
void roid_pipeline_free(roid_pipeline *pl);

/* The ingest sink (use with roid_ingest_params.defer_decode = true) and the
 * socket whose parts it takes. */
void roid_pipeline_sink(roid_pipeline *pl, roid_sink *ret);
void roid_pipeline_set_source(roid_pipeline *pl, roid_zsource *z);

/* The sink hands frames to the workers in batches: call flush when the
 * socket is drained (and before waiting for anything), so no frame waits for
 * the next message.  Returns false if jobs still wait for queue space.
 * Back-pressure (queue_full = wait): blocked is true while jobs wait for queue
 * space; stop receiving until roid_pipeline_flush() returns true.  `wake` is
 * called from a worker thread when space frees up while blocked. */
bool roid_pipeline_flush(roid_pipeline *pl);
bool roid_pipeline_blocked(roid_pipeline *pl);
/* Before the first frame is submitted: the workers read it unlocked (the work
 * queue's lock orders this store before any job they take). */
void roid_pipeline_set_wakeup(roid_pipeline *pl, void (*wake)(void *ctx), void *ctx);

/* Parameters for the next series (SIGHUP, control `set`). */
void roid_pipeline_set_config(roid_pipeline *pl, const roid_config *cfg, const char *config_text);
/* Zero the counters, and forget the current series' RoI state and counts and
 * start them again from the next frame (control `reset`).  Loop thread. */
void roid_pipeline_reset(roid_pipeline *pl);

/* Watchdog inputs: items handled so far (any thread may read), and work
 * queued or taken but not yet handled. */
uint64_t roid_pipeline_progress(roid_pipeline *pl);
uint64_t roid_pipeline_pending(roid_pipeline *pl);

/* Control replies from the latest snapshot (taken at a map publication, at
 * most every 0.25 s, and always for the final map),
 * with the contract of control.h: the number of key/value pairs packed, or
 * (map only) -ENODATA before the series' first map; ask then packs no points. */
int roid_pipeline_pack_map(roid_pipeline *pl, msgpack_packer *pk);
/* The control `series` reply: the last series message (start or end) the
 * analysis thread published, whether or not a publisher is configured;
 * -ENODATA before the first.  Any thread. */
int roid_pipeline_pack_series(roid_pipeline *pl, msgpack_packer *pk);
int roid_pipeline_pack_ask(roid_pipeline *pl, unsigned n, msgpack_packer *pk);
int roid_pipeline_pack_status(roid_pipeline *pl, msgpack_packer *pk);
/* The control socket's counts, for both status paths (the control reply
 * and the status topic).  Loop thread. */
void roid_pipeline_set_control_counts(roid_pipeline *pl, uint64_t requests, uint64_t errors, uint64_t unsent);

/* One line for sd_notify STATUS=. */
void roid_pipeline_status_line(roid_pipeline *pl, char *buf, size_t size);

#endif
