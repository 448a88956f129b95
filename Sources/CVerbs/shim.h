// C side of the Verbs module: the rdma-core headers, plus prefixed wrappers for what Swift cannot
// call as C code would (the habit of swift-nio's CNIOLinux shim).
//
// Why each wrapper is here:
//   - ibv_reg_mr, ibv_query_port: function-like MACROS in <infiniband/verbs.h>; Swift never sees
//     a macro and binds the name to the exported symbol behind it instead. For ibv_query_port
//     that symbol is the old ABI entry point, declared with `struct _compat_ibv_port_attr *`: the
//     macro is what routes to the provider's query_port with sizeof(struct ibv_port_attr). For
//     ibv_reg_mr the macro picks ibv_reg_mr_iova2 when IBV_ACCESS_OPTIONAL_RANGE is asked for.
//   - ibv_post_send, ibv_post_recv, ibv_poll_cq, ibv_req_notify_cq: `static inline` calls through
//     the context's op table (the data path). Swift's importer can compile such functions itself;
//     the wrappers keep one stable, prefixed entry point for every verb the Swift layer uses and
//     make the data path independent of how a header version spells them.
#ifndef CVERBS_SHIM_H
#define CVERBS_SHIM_H

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
// Not verbs: fstatfs, which Swift's Glibc module does not export, for reporting which filesystem
// a registered region file is on (tmpfs vs ext4 vs 9p matters for pinning).
#include <sys/vfs.h>

static inline struct ibv_mr *CVerbs_ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length,
                                               int access) {
    return ibv_reg_mr(pd, addr, length, access);
}

static inline int CVerbs_ibv_query_port(struct ibv_context *context, uint8_t port_num,
                                        struct ibv_port_attr *port_attr) {
    return ibv_query_port(context, port_num, port_attr);
}

// Returns 0, or an errno value (it does not set errno); *bad_wr is the first rejected request.
static inline int CVerbs_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr,
                                       struct ibv_send_wr **bad_wr) {
    return ibv_post_send(qp, wr, bad_wr);
}

// Returns 0, or an errno value (it does not set errno).
static inline int CVerbs_ibv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr,
                                       struct ibv_recv_wr **bad_wr) {
    return ibv_post_recv(qp, wr, bad_wr);
}

// Returns the number of completions written to wc (0..num_entries), or a negative value on error.
static inline int CVerbs_ibv_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc) {
    return ibv_poll_cq(cq, num_entries, wc);
}

// Returns 0, or an errno value.
static inline int CVerbs_ibv_req_notify_cq(struct ibv_cq *cq, int solicited_only) {
    return ibv_req_notify_cq(cq, solicited_only);
}

#endif
