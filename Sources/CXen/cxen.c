// Everything in CXen is inline in include/cxen.h; SwiftPM needs one source file per C target.
#include "cxen.h"
