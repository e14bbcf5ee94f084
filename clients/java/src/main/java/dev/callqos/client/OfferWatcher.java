package dev.callqos.client;

import dev.callqos.v1.Call;
import dev.callqos.v1.ListCallsRequest;
import dev.callqos.v1.ListCallsResponse;
import dev.callqos.v1.QosEvent;
import dev.callqos.v1.QosEventType;
import dev.callqos.v1.WatchEventsRequest;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Deque;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.NoSuchElementException;
import java.util.OptionalLong;
import java.util.Set;

/**
 * The calls offered on one line, each still OFFERING, to answer ({@link CallQosClient#answerCall})
 * or reject: an {@link EventWatcher} of the line's CALL_OFFERED events that reads each call,
 * skipping one that stopped ringing before it was read. Begun without a cursor it first reads where
 * a watch "from now" starts, then lists the calls already ringing (oldest first), then follows new
 * offers from that point, so none is missed and none yielded twice. It resumes across reconnects
 * and restarts as the EventWatcher does. Iterate it (blocking) and close it to stop.
 */
public final class OfferWatcher implements Iterable<Call>, Iterator<Call>, AutoCloseable {
  private final CallQosClient client;
  private final String line;
  private Long after;
  private EventWatcher events;
  private final Deque<Call> ringing = new ArrayDeque<>();
  private final Set<String> listed = new HashSet<>();
  private Call next;
  private volatile boolean closed;

  OfferWatcher(CallQosClient client, String line, Long afterSequence) {
    this.client = client;
    this.line = line;
    this.after = afterSequence;
  }

  /** The sequence of the last offer event read (or the cursor it started from): resume from it. */
  public OptionalLong lastSequence() {
    if (events != null) {
      return events.lastSequence();
    }
    return after == null ? OptionalLong.empty() : OptionalLong.of(after);
  }

  @Override
  public Iterator<Call> iterator() {
    return this;
  }

  /** Blocks until the next offered call; false once closed. Throws as the EventWatcher does. */
  @Override
  public boolean hasNext() {
    if (events == null && !closed) {
      start();
    }
    while (next == null && !closed) {
      if (!ringing.isEmpty()) {
        next = ringing.poll();
        break;
      }
      if (!events.hasNext()) {
        break;
      }
      QosEvent event = events.next();
      if (listed.remove(event.getCall())) {
        continue; // listed already: an offer has one such event
      }
      Call call = client.getCall(event.getCall());
      if (call.getState() == Call.State.STATE_OFFERING) {
        next = call;
      }
    }
    return next != null;
  }

  @Override
  public Call next() {
    if (!hasNext()) {
      throw new NoSuchElementException();
    }
    Call call = next;
    next = null;
    return call;
  }

  private void start() {
    if (after == null) {
      after = client.startSequence(WatchEventsRequest.newBuilder().setLine(line).build());
      List<Call> now = new ArrayList<>();
      ListCallsRequest.Builder req =
          ListCallsRequest.newBuilder().setFilter("state = OFFERING AND line = \"" + line + "\"");
      while (true) {
        ListCallsResponse page = client.listCalls(req.build());
        now.addAll(page.getCallsList());
        if (page.getNextPageToken().isEmpty()) {
          break;
        }
        req.setPageToken(page.getNextPageToken());
      }
      Collections.reverse(now); // oldest first
      for (Call call : now) {
        ringing.add(call);
        listed.add(call.getName());
      }
    }
    events = client.watch(WatchEventsRequest.newBuilder()
        .setAfterSequence(after)
        .setLine(line)
        .addTypes(QosEventType.QOS_EVENT_TYPE_CALL_OFFERED)
        .build());
  }

  /** Stops following; safe to call from another thread. */
  @Override
  public synchronized void close() {
    closed = true;
    if (events != null) {
      events.close();
    }
  }
}
