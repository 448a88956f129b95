// Experiment (not part of scripts/bench.sh): how should concurrent durable 4 KiB writes into
// separate region files be synced? Build: gcc -O2 -pthread -o syncprobe syncprobe.c
// Run: ./syncprobe DIR THREADS MODE SECONDS   (MODE 0: msync per write; 1: one syncfs per round)
// N threads, each owning a preallocated 16 MiB file mmap'd MAP_SHARED, write 4 KiB and make it
// durable, for T seconds. mode 0: msync per write. mode 1: group commit - writers enqueue, one
// syncer thread does sync_file_range(WRITE) for each pending file then one syncfs() per round.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static int N, MODE; static double T; static char *dir;
static atomic_long ops; static volatile int stop;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; static pthread_cond_t cv = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
static long round_no = 0, pending_round = 0; static int pending_fds[1024]; static long pending_off[1024]; static int npending = 0;
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static void *syncer(void *a){ int dfd=*(int*)a; for(;;){ pthread_mutex_lock(&mu); while(!npending && !stop) pthread_cond_wait(&cv,&mu); if(stop&&!npending){pthread_mutex_unlock(&mu);break;} int n=npending; int fds[1024]; long offs[1024]; memcpy(fds,pending_fds,n*sizeof(int)); memcpy(offs,pending_off,n*sizeof(long)); npending=0; long my=++round_no; pthread_mutex_unlock(&mu);
  for(int i=0;i<n;i++) sync_file_range(fds[i], offs[i], 4096, SYNC_FILE_RANGE_WAIT_BEFORE|SYNC_FILE_RANGE_WRITE|SYNC_FILE_RANGE_WAIT_AFTER);
  syncfs(dfd); pthread_mutex_lock(&mu); pending_round=my; pthread_cond_broadcast(&done); pthread_mutex_unlock(&mu);} return 0;}
static void *worker(void *a){ long id=(long)a; char p[512]; snprintf(p,sizeof p,"%s/f%ld",dir,id); int fd=open(p,O_RDWR|O_CREAT|O_TRUNC,0600); posix_fallocate(fd,0,16<<20); fsync(fd); char *m=mmap(0,16<<20,PROT_READ|PROT_WRITE,MAP_SHARED,fd,0); char buf[4096]; memset(buf,id,4096); long i=0;
  while(!stop){ long off=(i%4000)*4096; memcpy(m+off,buf,4096); if(MODE==0){ msync(m+off,4096,MS_SYNC);} else { pthread_mutex_lock(&mu); pending_fds[npending]=fd; pending_off[npending]=off; npending++; long want=round_no+1; pthread_cond_signal(&cv); while(pending_round<want) pthread_cond_wait(&done,&mu); pthread_mutex_unlock(&mu);} atomic_fetch_add(&ops,1); i++; }
  return 0;}
int main(int c,char**v){ dir=v[1]; N=atoi(v[2]); MODE=atoi(v[3]); T=atof(v[4]); int dfd=open(dir,O_RDONLY); pthread_t s,w[1024]; if(MODE) pthread_create(&s,0,syncer,&dfd);
  for(long i=0;i<N;i++) pthread_create(&w[i],0,worker,(void*)i); sleep(1); atomic_store(&ops,0); double t0=now(); usleep(T*1e6); long n=atomic_load(&ops); stop=1; pthread_mutex_lock(&mu); pthread_cond_broadcast(&cv); pending_round=1L<<60; pthread_cond_broadcast(&done); pthread_mutex_unlock(&mu);
  for(int i=0;i<N;i++) pthread_join(w[i],0); printf("threads %d mode %s: %.0f ops/s\n",N,MODE?"group-syncfs":"msync",n/(now()-t0)); return 0;}
