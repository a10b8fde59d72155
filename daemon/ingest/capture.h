/* capture.h - stream captures: a CBOR sequence (RFC 8742) of arrays of byte
 * strings, one array per ZeroMQ multipart message, one byte string per part
 * (the format MAX IV's dranspose records, so captures can be exchanged).
 *
 * Writer: appends records with buffered stdio; roid_capture_writer_close
 * flushes.  Reader: maps the file and hands out parts that point into the
 * mapping (valid until roid_capture_reader_close).  A file whose first item
 * is not an array (a single-message .cbor file, e.g. one Stream V2 message)
 * is read as one record of one part.
 *
 * Ownership: the caller owns each reader and writer (open / close); parts
 * handed out point into the reader's mapping and are not copied.
 * Threads: one thread per reader/writer.
 */
#ifndef ROID_INGEST_CAPTURE_H
#define ROID_INGEST_CAPTURE_H

#include <stddef.h>

#include "ingest/message.h"
#include "service/err.h"
#include "service/limits.h"

typedef struct roid_capture_writer roid_capture_writer;
typedef struct roid_capture_reader roid_capture_reader;

/* -EEXIST when path is a regular file already (never replaced); a FIFO or a
 * device is written to. */
int roid_capture_writer_open(const char *path, roid_capture_writer **ret);
int roid_capture_write(roid_capture_writer *w, const roid_part *parts, size_t n_parts);
/* Returns the first write/flush error, if any. */
int roid_capture_writer_close(roid_capture_writer *w);

int roid_capture_reader_open(const char *path, const roid_limits *lim, roid_capture_reader **ret, roid_err *err);
/* Next record: 1 and *ret_n parts in parts[0..max_parts), 0 at the clean end
 * of the file, negative errno otherwise (err names the record's byte offset).
 * -EMSGSIZE: a well-formed record over max_parts (or the max_parts given
 * here) or max_message_bytes was skipped; the next call reads the record
 * after it (count it as messages_bad_size, roid_ingest_rejected(), as the
 * live path does).  Any other error is a record that cannot be delimited
 * (truncated, not an array of byte strings): the reader cannot
 * resynchronise, and every later call returns that error again.  parts is
 * the caller's scratch: on an error its entries are unspecified, *ret_n is
 * untouched. */
int roid_capture_next(roid_capture_reader *r, roid_part *parts, size_t max_parts, size_t *ret_n, roid_err *err);
/* Byte offset of the next record (for messages). */
size_t roid_capture_offset(const roid_capture_reader *r);
void roid_capture_reader_close(roid_capture_reader *r);

#endif
