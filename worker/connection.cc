namespace tlserve::worker {}
