/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Intrusive circular doubly-linked list (the c-list shape): a List is both
 * the head and the link embedded in each element, so unlinking is O(1) and
 * needs no allocation.  An unlinked node points to itself.
 */

#include <stdbool.h>
#include <stddef.h>

typedef struct List List;
struct List {
        List *next, *prev;
};

#define LIST_INIT(_var) { .next = &(_var), .prev = &(_var) }

static inline void list_init(List *l) {
        l->next = l->prev = l;
}

static inline bool list_is_empty(const List *l) {
        return l->next == l;
}

/* A node is linked iff it is not pointing at itself. */
static inline bool list_is_linked(const List *l) {
        return l->next != l;
}

static inline void list_link_before(List *where, List *n) {
        n->prev = where->prev;
        n->next = where;
        where->prev->next = n;
        where->prev = n;
}

static inline void list_append(List *head, List *n) {
        list_link_before(head, n);
}

static inline void list_prepend(List *head, List *n) {
        list_link_before(head->next, n);
}

static inline void list_unlink(List *n) {
        n->prev->next = n->next;
        n->next->prev = n->prev;
        n->next = n->prev = n;
}

static inline List *list_first(List *head) {
        return list_is_empty(head) ? NULL : head->next;
}

#define list_entry(ptr, type, member) ((type *) ((char *) (ptr) - offsetof(type, member)))

#define list_first_entry(head, type, member)                                    \
        (list_is_empty(head) ? NULL : list_entry((head)->next, type, member))

#define list_last_entry(head, type, member)                                     \
        (list_is_empty(head) ? NULL : list_entry((head)->prev, type, member))

#define list_for_each_entry(pos, head, member)                                  \
        for (pos = list_entry((head)->next, __typeof__(*pos), member);         \
             &pos->member != (head);                                            \
             pos = list_entry(pos->member.next, __typeof__(*pos), member))

#define list_for_each_entry_safe(pos, n, head, member)                          \
        for (pos = list_entry((head)->next, __typeof__(*pos), member),         \
             n = list_entry(pos->member.next, __typeof__(*pos), member);       \
             &pos->member != (head);                                            \
             pos = n, n = list_entry(n->member.next, __typeof__(*n), member))
