//! What `helm uninstall` runs before it removes the operator: releases the
//! operator's finalizers so that nothing it owned is left Terminating.
