/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * ipcmux for GLib applications (library libipcmux-glib, pkg-config module
 * "ipcmux-glib").  The core library has no GLib dependency.
 */

#include <glib.h>

#include <ipcmux/ipcmux.h>

G_BEGIN_DECLS

/*
 * ipcmux_glib_source_new() - a GSource that drives @c's connection
 *
 * Comes back unattached: g_source_attach() it to the GMainContext of your
 * choice (the thread that iterates that context runs the receive handlers).
 * The connection is process-wide and has one driver: NULL with errno EBUSY
 * if another loop already drives it.  g_source_destroy() frees the slot
 * (even while references remain).  Do not g_source_set_callback() it: the
 * callback slot is how it learns that it was destroyed.
 * Follows sd-bus's loop contract: the fd's events are recomputed in
 * prepare (POLLOUT while output waits), the ready time comes from the
 * absolute timeout, and each dispatch does a bounded amount of work.
 */
GSource *ipcmux_glib_source_new(ipcmux_channel *c);

/*
 * GVariant helpers: the payload is the type string, a NUL, then the value's
 * serialised bytes.  The receiver checks the type and never trusts the
 * bytes (g_variant_new_from_data(..., trusted = FALSE)).
 */
int ipcmux_glib_send_variant(ipcmux_sender *s, GVariant *value);
/* A new reference, or NULL (errno EBADMSG) if @m does not hold a value of
 * @type in normal form (what ipcmux_glib_send_variant() sends). */
GVariant *ipcmux_glib_message_get_variant(ipcmux_message *m, const GVariantType *type);

G_END_DECLS
