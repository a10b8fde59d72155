/* writer.h - the results-file writer thread: one thread makes every HDF5 call
 * of the daemon (Debian's HDF5 is not thread-safe), fed by the analysis
 * through a bounded queue of series events (open, frame records, close) and a
 * side slot for RoI map snapshots.  It writes one SWMR results file per
 * series (results.h), flushes it every flush_interval_s so that readers see
 * the frames within that time, and writes the latest map snapshot at each
 * flush.  Frame records are appended in batches: an append is due when half
 * the queue depth (at most 256) is queued, so that the producer has room
 * while it is written; a record waits in the queue for that, for whatever
 * follows it, for wait_idle or for the next flush, never longer, and is
 * discarded at once when there is no file to write to.
 *
 * Queue full: roid_writer_append WAITS for room.  A results file must not
 * lose frames, so a slow disk slows the pipeline (the back-pressure goes up to
 * the ingest queues, whose own queue_full policy then decides).  The thread
 * never stops consuming: after an error it discards instead of writing, so
 * the wait always ends.
 *
 * Errors (unwritable directory, disk full, ...): logged once per series with
 * the path and HDF5's reason, counted in roid_writer_stats and returned by
 * the next roid_writer_wait_idle; the writer discards the rest of that series
 * (the file keeps what was flushed) and writes the next series normally.
 *
 * Maps: roid_writer_map copies the RoI state into a writer-owned clone under
 * a lock (allocating only the first time in a series, or when the grid
 * changes); the thread writes the newest snapshot at its next flush, older
 * unwritten ones are superseded.  A final snapshot is kept for the close, so
 * the per-frame labels it implies cover every frame appended before it.
 *
 * Ownership: the writer copies everything it is given (meta and its strings,
 * records, counters, RoI states); nothing of the caller is kept.  Threads:
 * open / append / map / close from one producer thread at a time (the
 * analysis); queue_depth, queue_capacity, stats and wait_idle from
 * any thread; free from the thread that created it, after the producer is
 * done.
 */
#ifndef ROID_OUTPUTS_WRITER_H
#define ROID_OUTPUTS_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "analysis/record.h"
#include "analysis/roi.h"
#include "outputs/results.h"
#include "service/counters.h"
#include "service/err.h"

#define ROID_WRITER_MAX_QUEUE  65536
#define ROID_WRITER_MAX_CONFIG (1u << 20) /* bytes of configuration text stored in a file */

typedef struct roid_writer roid_writer;

typedef struct {
        uint64_t series_opened;    /* files created */
        uint64_t series_written;   /* files closed without an error */
        uint64_t series_failed;    /* series whose file failed (each logged once) */
        uint64_t frames_written;   /* frame records appended to a file (and not lost with a failed flush) */
        uint64_t appends;          /* appends that wrote them: a batch each */
        uint64_t frames_discarded; /* records of failed series (or with no open series), those appended
                                      since the last successful flush of a file that failed included */
} roid_writer_stats;

/* queue_depth 1..ROID_WRITER_MAX_QUEUE records (the queue is allocated now),
 * flush_interval_s in (0, 3600].  ctr may be NULL (kept for the counters the
 * writer will add to; see roid_writer_stats).  Starts the thread.  -EINVAL,
 * -ENOMEM, or the error of pthread_create. */
int roid_writer_new(unsigned queue_depth, double flush_interval_s, roid_counters *ctr, roid_writer **ret);
/* Writes everything queued, closes an open file (as unterminated: no
 * counters), joins the thread, frees.  NULL is a no-op. */
void roid_writer_free(roid_writer *w);

/* Can results files be created in dir?  0, or a negative errno with err
 * naming [output] directory, the path and why (not there, not a directory,
 * not writable).  For the start, a reload and a control `set`, so that a typo
 * shows at once rather than at the first series.  Any thread. */
int roid_writer_check_dir(const char *dir, roid_err *err);

/* Starts a series: picks its file here (roid_results_unique_path, also
 * skipping the files of opens still queued) and copies it to ret_path (NULL:
 * not wanted); the thread creates it.  A series still open is closed first
 * (unterminated).  Returns after enqueuing: 0, -EINVAL (no roi parameters),
 * -EMSGSIZE (config text above ROID_WRITER_MAX_CONFIG), -ENAMETOOLONG (the
 * path, or ret_path too small), -EEXIST (no free name), -ENOMEM; the file's own
 * errors come later (log, stats, wait_idle). */
int roid_writer_open(roid_writer *w, const char *dir, const roid_results_meta *meta, char *ret_path, size_t path_size);
/* Queues a copy of one record; waits while the queue is full.  -EINVAL with
 * no open series. */
int roid_writer_append(roid_writer *w, const roid_frame_record *rec);
/* Snapshots the RoI state for the next flush (final = true: after
 * roid_roi_finish, kept for the close).  -EINVAL with no open series or an
 * unfinished state with final, -ENOMEM. */
int roid_writer_map(roid_writer *w, const roid_roi *roi, bool final);
/* The beam centre, when it was estimated from the first frame after the open
 * (the file says "estimated" from the start and NaN until this arrives):
 * written at the next flush or at the close.  -EINVAL with no open series. */
int roid_writer_set_center(roid_writer *w, double center_x, double center_y);
/* A control reset of the series' RoI state, in order with the records
 * appended: the maps written after it are of the records after it
 * (roid_results_mark_reset).  -EINVAL with no open series. */
int roid_writer_reset(roid_writer *w);
/* Ends the series: the final snapshot (if one was passed) is written, then
 * the counters (ctr may be NULL) and terminated (roid_results_close), and the
 * file is closed.  Returns after enqueuing; -EINVAL with no open series. */
int roid_writer_close(roid_writer *w, const roid_counters *ctr, bool terminated);

/* Blocks until everything queued before the call is written and flushed (a
 * closed series' file is closed).  Returns the first error since the last
 * call (negative errno), else 0. */
int roid_writer_wait_idle(roid_writer *w);

size_t roid_writer_queue_depth(const roid_writer *w);
size_t roid_writer_queue_capacity(const roid_writer *w);
void roid_writer_get_stats(roid_writer *w, roid_writer_stats *ret);

#endif
